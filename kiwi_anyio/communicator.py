"""The Communicator: kiwiPy's task queues, broadcasts and RPC, on trio and asyncio.

::

    async with kiwi_anyio.connect("amqp://localhost") as comm:
        await comm.add_rpc_subscriber(lambda comm, msg: msg * 2, "double")
        fut = await comm.rpc_send("double", 21)
        assert await fut == 42

The communicator lives in a task group: every consumer (task, RPC, broadcast and reply
queues) is a task it owns, and every running subscriber call is a child of that consumer.
Leaving ``async with`` cancels and joins them all; a task whose handling had not finished
is requeued (never acknowledged), pending result futures fail with
:class:`~kiwi_anyio.CommunicatorClosed`, and the connection closes.

The wire format is kiwiPy 0.9's (see :mod:`kiwi_anyio._wire`), so kiwi_anyio and kiwiPy
processes on one broker work together.
"""

from __future__ import annotations

import concurrent.futures
import contextvars
import dataclasses
import inspect
import logging
import math
import os
import random
import uuid
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from types import TracebackType
from typing import Any, Final, Self, cast

import anyio
import anyio.abc
import anyio.to_thread

from . import _wire as wire
from ._pending import DEFAULT, PendingReplies, Timeout
from ._signal import new_signal
from .blocking import BlockingCommunicator, open_blocking
from .codecs import YAML, Codec, codec_from_functions, decoder_for
from .exceptions import (
    AMQPError,
    AuthenticationError,
    ChannelClosed,
    CommunicatorClosed,
    ConnectionClosed,
    ConnectionFailed,
    ConsumerCancelled,
    DeliveryFailed,
    DuplicateSubscriberIdentifier,
    KiwiError,
    MessageReturned,
    ProtocolError,
    PublishNacked,
    QueueEmpty,
    TaskRejected,
    UndecodableMessage,
    UnroutableError,
    VhostNotFound,
)
from .filters import BroadcastFilter
from .futures import Future
from .protocol import Channel, Connection, Message, Properties, parse_url
from .protocol import connect as amqp_connect
from .protocol.url import ConnectionParameters

__all__ = ["Communicator", "IncomingTask", "TaskQueue", "connect"]

logger = logging.getLogger(__name__)

DEFAULT_URL: Final = "amqp://guest:guest@127.0.0.1/"

DEFAULT_TASK_PREFETCH: Final = 1
DEFAULT_RPC_PREFETCH: Final = 256
REQUEUE_DELAY: Final = 1.0  # seconds before a task every subscriber rejected is requeued
SETTLE_TIMEOUT: Final = 5.0  # seconds a finished request may take to be answered and acked
NEXT_TASK_POLL: Final = 0.05
DEFAULT_NACK_RETRY: Final = 30.0  # seconds a nacked publish is sent again
# Replies go through the default exchange, straight to the requester's queue by its name: a
# reply needs no binding, so one sent while the requester is still re-binding its reply queue
# after a broker restart (the task and message exchanges are transient) is not dropped.
REPLY_EXCHANGE: Final = ""
DEFAULT_LOST_REPLY_GRACE: Final = 30.0  # seconds a reply that may be lost is still awaited
STABLE_LINK: Final = 1.0  # seconds a link must stay up before the reconnect backoff resets
HANDLER_POOL_KEEP: Final = 128  # parked handler tasks kept per consumer

Subscriber = Callable[..., Any]


def _new_id() -> str:
    return uuid.uuid4().hex


class _RequestIds:
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
        return f"{self._prefix}{count:08x}{_check16(count):04x}"


def _check16(count: int) -> int:
    """A 16-bit check of a 32-bit counter; its first hex digit changes whenever one hex digit
    of ``count`` does.

    That digit is the sum of the counter's hex digits modulo 16 (changing one digit by
    1..15 changes the sum by as much); the other three mix the counter, for a wider spread.
    """
    nibbles = (count & 0x0F0F0F0F) + ((count >> 4) & 0x0F0F0F0F)
    digit_sum = ((nibbles * 0x01010101) >> 24) & 0xF
    mixed = (count * 0x9E3779B1) >> 20
    return (digit_sum << 12) | (mixed & 0xFFF)


_ALL_REQUEST_IDS: weakref.WeakSet[_RequestIds] = weakref.WeakSet()


def _reseed_request_ids() -> None:
    for ids in list(_ALL_REQUEST_IDS):
        ids.reseed()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_reseed_request_ids)


def _dashed(hex_id: str) -> str:
    """``str(uuid.UUID(hex_id))``: the 8-4-4-4-12 form."""
    return f"{hex_id[:8]}-{hex_id[8:12]}-{hex_id[12:16]}-{hex_id[16:20]}-{hex_id[20:]}"


def _is_async(fn: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - callable objects with async __call__
    )


async def _resolve(value: Any) -> Any:
    """Await one level of a future-like value (ours, concurrent.futures, or an awaitable)."""
    if isinstance(value, Future):
        return await value
    if isinstance(value, concurrent.futures.Future):
        return await anyio.to_thread.run_sync(value.result, abandon_on_cancel=True)
    return await value


def _is_future_like(value: Any) -> bool:
    return isinstance(value, Future | concurrent.futures.Future) or inspect.isawaitable(value)


class _HandlerPool:
    """Runs a consumer's handlers in reusable tasks of its task group.

    Spawning an anyio task costs about six times what waking a parked one does (a cancel
    scope, a task handle, a context copy); a task round trip spends one per delivery. A
    handler that finishes parks its task for the next message, up to ``keep`` parked tasks;
    :meth:`close` releases them so the group can finish. Cancelling the group cancels busy
    and parked tasks alike, as it cancelled the task-per-message handlers before.
    """

    __slots__ = ("_closed", "_handler", "_idle", "_keep", "_tg")

    def __init__(
        self,
        tg: anyio.abc.TaskGroup,
        handler: Callable[[Message], Coroutine[Any, Any, None]],
        keep: int = HANDLER_POOL_KEEP,
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


class _ReconnectBackoff:
    """The pauses between reconnection attempts.

    The first attempt after a loss comes at once (a blip, a dropped proxy: the broker is
    most likely still there), within a 50 ms jitter; then 0.25 s, 0.5 s, 1 s ... up to
    ``max_delay``, each jittered down by up to half so that many clients do not come back
    in step. Attempts count on across links that drop within ``STABLE_LINK`` seconds of
    coming up, so a connection the broker keeps closing at once is retried with backoff.
    """

    def __init__(self, max_delay: float) -> None:
        self.max_delay = max_delay
        self.attempts = 0
        self._up_since: float | None = None

    def connected(self, now: float) -> None:
        """The link is up."""
        self._up_since = now

    def lost(self, now: float) -> None:
        """The link dropped: a link that was stable starts the backoff afresh."""
        if self._up_since is not None and now - self._up_since >= STABLE_LINK:
            self.attempts = 0
        self._up_since = None

    def next_delay(self) -> float:
        """The pause before the next attempt."""
        self.attempts += 1
        if self.attempts == 1:
            return min(self.max_delay, 0.05) * random.random()
        delay = min(self.max_delay, 0.25 * 2.0 ** min(self.attempts - 2, 10))
        return delay * random.uniform(0.5, 1.0)


class _ConsumerHandle:
    """A consumer task: cancel its scope and wait for ``done`` to stop it."""

    def __init__(self, bound_settles: Callable[[Channel | None], None]) -> None:
        self.scope = anyio.CancelScope()
        self.done = anyio.Event()
        self.done_callbacks: list[Callable[[], object]] = []
        self.draining = False
        self.receiving: anyio.CancelScope | None = None
        self.channel: Channel | None = None  # the channel it consumes on now
        self._bound_settles = bound_settles

    def finished(self) -> None:
        self.done.set()
        for callback in self.done_callbacks:
            callback()

    async def stop(self) -> None:
        self.scope.cancel()
        if self.channel is not None:
            # replies of finished handlers are still sent and acked, within SETTLE_TIMEOUT
            # (a broker blocking publishing must not block the removal of a subscriber)
            self._bound_settles(self.channel)
        with anyio.CancelScope(shield=True):
            await self.done.wait()


class IncomingTask:
    """A task taken from a queue with :meth:`TaskQueue.next_task` or ``async for``.

    Call :meth:`process` (or use ``async with task.processing() as outcome``) and set the
    outcome's result; the sender gets it once the ``next_task`` block exits. A task whose
    outcome is never set is requeued.

    Attributes:
        body: the task.
        no_reply: True if the sender does not wait for a result.
        state: ``pending``, ``processing``, ``finished`` or ``requeued``.
    """

    def __init__(self, queue: TaskQueue, message: Message, body: Any, no_reply: bool) -> None:
        self._queue = queue
        self._message = message
        self.body = body
        self.no_reply = no_reply
        self.state = "pending"
        self._outcome: Future[Any] | None = None

    def process(self) -> Future[Any]:
        """Start processing: returns the outcome future to resolve with the result."""
        if self.state != "pending":
            raise concurrent.futures.InvalidStateError(f"the task is {self.state}")
        self.state = "processing"
        self._outcome = Future()
        return self._outcome

    @asynccontextmanager
    async def processing(self) -> AsyncIterator[Future[Any]]:
        """``async with task.processing() as outcome:``; an exception becomes the outcome."""
        outcome = self.process()
        try:
            yield outcome
        except Exception as exc:
            if not outcome.done():
                outcome.set_exception(exc)
            raise

    async def requeue(self) -> None:
        """Give the task back to the queue."""
        if self.state not in ("pending", "processing"):
            raise concurrent.futures.InvalidStateError(f"the task is {self.state}")
        self.state = "requeued"
        if not self._message.settled and self._message.channel.is_open:
            self._message.nack(requeue=True)

    async def _finish(self) -> None:
        """Reply and ack if the outcome is known; requeue if it was never processed."""
        outcome = self._outcome
        if self.state != "processing" or outcome is None:
            if self.state == "pending":
                await self.requeue()
            return
        if not outcome.done():
            self._queue._comm._spawn(self._finish_later)
            return
        await self._settle(outcome)

    async def _finish_later(self) -> None:
        outcome = self._outcome
        assert outcome is not None
        try:
            try:
                await outcome.wait()
            except Exception:
                pass
            await self._settle(outcome)
        finally:
            if not self._message.settled and self._message.channel.is_open:
                self._message.nack(requeue=True)

    async def _settle(self, outcome: Future[Any]) -> None:
        comm = self._queue._comm
        if outcome.cancelled():
            await self.requeue()
            return
        if not self.no_reply:
            exc = outcome.exception()
            reply = (
                wire.exception_reply(exc, with_host=True)
                if exc is not None
                else wire.result_reply(outcome.result(), with_host=True)
            )
            await comm._send_reply(self._message, reply, self._queue.exchange)
        self.state = "finished"
        if self._message.channel.is_open:
            self._message.ack()


class TaskQueue:
    """A durable task queue. Get one with :meth:`Communicator.task_queue`.

    Tasks are persistent messages; a subscriber handles up to ``prefetch_count`` of them at
    once, and each is acknowledged only after its result was sent.
    """

    def __init__(
        self,
        comm: Communicator,
        name: str,
        *,
        exchange: str,
        prefetch_count: int,
        prefetch_size: int = 0,
    ) -> None:
        self._comm = comm
        self.name = name
        self.exchange = exchange
        self.prefetch_count = prefetch_count
        self.prefetch_size = prefetch_size
        self._subscribers: dict[str, Subscriber] = {}
        self._declared = False
        self._channel: Channel | None = None
        self._consumer: _ConsumerHandle | None = None
        self._lock = anyio.Lock()

    def __repr__(self) -> str:
        return f"<TaskQueue {self.name!r} on {self.exchange!r}>"

    def _is_declared(self) -> bool:
        return self._declared

    async def _ensure_declared(self) -> None:
        if self._declared:
            return
        async with self._lock:
            if self._is_declared():  # a concurrent caller may have declared it meanwhile
                return
            comm = self._comm
            await comm._ensure_exchange(self.exchange)
            arguments: dict[str, Any] = {"x-message-ttl": wire.TASK_MESSAGE_TTL}
            if comm.testing_mode:
                arguments["x-expires"] = wire.TESTING_TASK_QUEUE_EXPIRES
            if comm.queue_type is not None:
                arguments["x-queue-type"] = comm.queue_type
            await comm._declare_task_queue(self.name, arguments)
            await comm._declare(
                lambda ch: ch.queue_bind(self.name, self.exchange, routing_key=self.name),
                f"binding of task queue {self.name!r}",
            )
            self._declared = True

    async def _get_channel(self) -> Channel:
        if self._channel is None or not self._channel.is_open:
            connection = await self._comm._wait_connection()
            self._channel = await connection.channel(prefetch_count=self.prefetch_count)
        return self._channel

    async def _open_consumer_channel(self, connection: Connection) -> Channel:
        # declared again at every (re)start of the consumer: the queue may have been deleted
        self._declared = False
        await self._ensure_declared()
        return await connection.channel(prefetch_count=self.prefetch_count)

    async def task_send(
        self, task: Any, no_reply: bool = False, *, timeout: Timeout = DEFAULT
    ) -> Future[Any] | None:
        """Send a task; return once the broker confirmed it.

        Args:
            task: the task (any value the codec can encode).
            no_reply: send it without a reply (no future).
            timeout: seconds the future waits for the result before it fails with
                :class:`~kiwi_anyio.RequestTimeout` (the task is still done, later, if no
                worker has taken it yet); ``None``: no limit. Default: the communicator's
                ``request_timeout``.

        Returns:
            A future of the worker's result (``None`` with ``no_reply``). It fails with
            :class:`~kiwi_anyio.RequestLost` if its reply can no longer come (the task queue
            was deleted with the task in it, the reply queue was lost).

        Raises:
            CommunicatorClosed: the communicator is closed.
            DeliveryFailed: the broker did not take the message (a nacked one is sent
                again for ``nack_retry_timeout`` seconds first: a quorum queue nacks while
                it elects a new leader).

        Cancellation: cancelled before the broker's confirm, the task may or may not have
        been queued, and no future is returned.
        """
        comm = self._comm
        comm._check_open()
        body = comm._codec.encode((task, no_reply))
        try:
            return await comm._send_request(
                body,
                exchange=self.exchange,
                routing_key=self.name,
                persistent=True,
                no_reply=no_reply,
                what=f"task to queue {self.name!r}",
                timeout=comm._timeout(timeout),
                prepare=self._ensure_declared,
            )
        except MessageReturned as exc:
            self._declared = False  # deleted by someone: declared again by the next send
            raise UnroutableError(
                f"task queue {self.name!r} is not bound to exchange {self.exchange!r} (was "
                f"it deleted?): {exc}"
            ) from None

    async def add_task_subscriber(
        self, subscriber: Subscriber, identifier: str | None = None
    ) -> str:
        """Add ``subscriber(comm, task)``; returns its identifier.

        Subscribers are tried in the order they were added: the first that returns gives the
        result; one that raises :class:`~kiwi_anyio.TaskRejected` passes the task on; any
        other exception reaches the sender as :class:`~kiwi_anyio.RemoteException`.
        Plain functions run in a worker thread; ``async def`` ones in the event loop.
        """
        comm = self._comm
        comm._check_open()
        identifier = identifier or _new_id()
        if identifier in self._subscribers:
            raise DuplicateSubscriberIdentifier(f"task subscriber {identifier!r} already exists")
        self._subscribers[identifier] = subscriber
        try:
            await self._ensure_declared()
            if self._consumer is None:
                self._consumer = await comm._start_consumer(
                    self._open_consumer_channel,
                    self.name,
                    self._on_task,
                    what=f"task queue {self.name!r}",
                )
        except BaseException:
            self._subscribers.pop(identifier, None)
            raise
        return identifier

    async def remove_task_subscriber(self, identifier: str) -> None:
        """Remove a task subscriber.

        Raises:
            ValueError: no subscriber has this identifier.
        """
        try:
            del self._subscribers[identifier]
        except KeyError:
            raise ValueError(f"unknown task subscriber {identifier!r}") from None
        if not self._subscribers and self._consumer is not None:
            consumer, self._consumer = self._consumer, None
            await consumer.stop()

    @asynccontextmanager
    async def task_subscriber(
        self, subscriber: Subscriber, identifier: str | None = None
    ) -> AsyncIterator[str]:
        """``async with queue.task_subscriber(fn) as ident:``; removed when the block exits."""
        ident = await self.add_task_subscriber(subscriber, identifier)
        try:
            yield ident
        finally:
            with anyio.CancelScope(shield=True):
                if ident in self._subscribers:
                    await self.remove_task_subscriber(ident)

    async def _on_task(self, message: Message) -> None:
        comm = self._comm
        handed_off = False  # to a confirm callback, which acks
        try:
            try:
                task, no_reply = wire.decode_task(comm._decode(message))
            except UndecodableMessage as exc:
                await comm._reject_undecodable(message, exc, self.exchange, with_host=True)
                return
            for subscriber in list(self._subscribers.values()):
                try:
                    result = await comm._call(subscriber, comm._callback_comm, task)
                    while _is_future_like(result):
                        if not no_reply:
                            await comm._send_reply(message, wire.pending_reply(), self.exchange)
                        result = await _resolve(result)
                except TaskRejected:
                    continue
                except concurrent.futures.CancelledError as exc:
                    reply = wire.cancelled_reply(str(exc) or None)
                except Exception as exc:
                    if no_reply:
                        logger.exception("task subscriber %r raised (no reply wanted)", subscriber)
                    reply = wire.exception_reply(exc, with_host=True)
                else:
                    reply = wire.result_reply(result, with_host=True)
                handed_off = await comm._settle(message, None if no_reply else reply, self.exchange)
                return
            # nobody took it: give it back, after a pause so it does not spin
            await anyio.sleep(REQUEUE_DELAY)
            message.nack(requeue=True)
        except KiwiError as exc:  # the link dropped, or the communicator closes
            logger.warning(
                "task %s on queue %r not settled: %s", message.delivery_tag, self.name, exc
            )
        finally:
            if not handed_off and not message.settled and message.channel.is_open:
                message.nack(requeue=True)

    @asynccontextmanager
    async def next_task(
        self, timeout: float | None = 5.0, *, fail: bool = True
    ) -> AsyncIterator[IncomingTask | None]:
        """``async with queue.next_task(timeout=1.0) as task:`` takes one task (pull).

        Waits up to ``timeout`` seconds for a task. When the block exits, a processed task's
        result is sent and it is acknowledged; an unprocessed one is requeued.

        Raises:
            QueueEmpty: no task arrived in time (with ``fail=False``, ``None`` is yielded).
        """
        task = await self._get_task(timeout)
        if task is None:
            if fail:
                raise QueueEmpty(f"no task in queue {self.name!r}")
            yield None
            return
        try:
            yield task
        finally:
            with anyio.CancelScope(shield=True):
                await task._finish()

    async def _get_task(self, timeout: float | None) -> IncomingTask | None:
        """One task by ``basic_get``, polling until ``timeout`` (0: just once)."""
        comm = self._comm
        comm._check_open()
        await self._ensure_declared()
        deadline = None if timeout is None else anyio.current_time() + timeout
        while True:
            channel = await self._get_channel()
            message = await channel.basic_get(self.name)
            if message is not None:
                try:
                    task, no_reply = wire.decode_task(comm._decode(message))
                except UndecodableMessage as exc:
                    await comm._reject_undecodable(message, exc, self.exchange, with_host=True)
                    continue
                return IncomingTask(self, message, task, no_reply)
            if deadline is not None and anyio.current_time() >= deadline:
                return None
            await anyio.sleep(NEXT_TASK_POLL)

    def __aiter__(self) -> _TaskIterator:
        """``async for task in queue``: every task now in the queue, without waiting.

        Tasks not processed by the end of the iteration are requeued.
        """
        return _TaskIterator(self)


class _TaskIterator:
    def __init__(self, queue: TaskQueue) -> None:
        self._queue = queue
        self._held: list[IncomingTask] = []

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> IncomingTask:
        held = self._held
        for done in [t for t in held if t.state == "processing"]:
            held.remove(done)
            await done._finish()
        task = await self._queue._get_task(0)
        if task is None:
            with anyio.CancelScope(shield=True):
                for pending in held:
                    await pending._finish()
                held.clear()
            raise StopAsyncIteration
        held.append(task)
        return task


class Communicator:
    """kiwiPy's communicator for trio and asyncio. Create it with :func:`connect`.

    Args:
        url: ``amqp://`` or ``amqps://`` URL of the broker.
        message_exchange: the exchange of RPCs and broadcasts.
        task_exchange: the exchange of task queues.
        task_queue: the default task queue.
        task_prefetch_size: byte limit of unacknowledged tasks (0: none).
        task_prefetch_count: tasks a worker handles at once (kiwiPy's default 0 means no
            limit; ours is 1).
        rpc_prefetch_count: RPC calls handled at once per RPC subscriber; more wait in the
            broker, so a flood of calls cannot exhaust this process's memory. 0: no limit
            (kiwiPy's behaviour). A subscriber that awaits RPCs to itself needs a limit
            above its nesting depth.
        encoder: a kiwiPy-style encoder ``obj -> bytes`` (with ``decoder``).
        decoder: a kiwiPy-style decoder ``bytes -> obj``.
        codec: a :class:`~kiwi_anyio.codecs.Codec` instead of encoder/decoder (default:
            YAML written as kiwiPy writes it, decoded safely).
        queue_expires: ms an unused RPC queue lives (``x-expires``).
        testing_mode: auto-delete exchanges and task queues that expire (``x-expires``),
            as kiwiPy (transient on RabbitMQ 3.x, durable on 4.x).
        queue_type: ``"quorum"`` to declare task queues as quorum queues (new queues only).
        reconnect: recover from a lost connection (on by default): reconnect with backoff,
            redeclare the topology and resume every subscriber. A refused login or an
            explicit close never triggers it.
        reconnect_timeout: how long a send waits for a recovery before it fails.
        nack_retry_timeout: how long a send the broker nacks is sent again (with backoff)
            before it fails with ``DeliveryFailed``: a quorum queue nacks for seconds while
            it elects a new leader after a node went down. 0: fail at the first nack
            (kiwiPy's behaviour; for a queue with ``overflow=reject-publish`` used as
            backpressure).
        reconnect_max_delay: the longest pause between reconnection attempts (seconds).
            The first attempt follows the loss at once (within 50 ms); later ones back off
            from 0.25 s, doubling, jittered; a link that drops within 1 s of coming up goes
            on backing off instead of starting at once again.
        request_timeout: the default ``timeout`` of :meth:`task_send` and :meth:`rpc_send`
            (seconds): a future with no reply by then fails with
            :class:`~kiwi_anyio.RequestTimeout`. ``None`` (the default, as kiwiPy): wait
            until the reply comes, the request is known lost, or the communicator closes.
        lost_reply_grace: once a request's reply may have been lost (the reply queue was
            gone after a reconnection; the broker restarted while an RPC call was waiting),
            how long its future stays open for a reply that may still come, before it fails
            with :class:`~kiwi_anyio.RequestLost` (seconds).
        drain_timeout: on leaving ``async with``, stop taking new messages and let the
            subscriber calls in progress finish for up to this many seconds before they are
            cancelled (and their tasks requeued). Default 0: cancel at once.
        blocking_backend: the event loop (``"asyncio"`` or ``"trio"``) that runs in the
            background thread when the communicator is used with a plain ``with``.
        ssl_context: TLS context for ``amqps://``.
        **connection_options: any :class:`~kiwi_anyio.protocol.ConnectionParameters` field
            (``heartbeat``, ``connection_timeout`` …).
    """

    def __init__(
        self,
        url: str | ConnectionParameters | None = None,
        *,
        message_exchange: str = wire.MESSAGE_EXCHANGE,
        task_exchange: str = wire.TASK_EXCHANGE,
        task_queue: str = wire.TASK_QUEUE,
        task_prefetch_size: int = 0,
        task_prefetch_count: int = DEFAULT_TASK_PREFETCH,
        rpc_prefetch_count: int = DEFAULT_RPC_PREFETCH,
        encoder: Callable[[Any], bytes] | None = None,
        decoder: Callable[[bytes], Any] | None = None,
        codec: Codec | None = None,
        queue_expires: int = wire.QUEUE_EXPIRES,
        testing_mode: bool = False,
        queue_type: str | None = None,
        blocking_backend: str = "asyncio",
        reconnect: bool = True,
        reconnect_timeout: float = 60.0,
        nack_retry_timeout: float = DEFAULT_NACK_RETRY,
        reconnect_max_delay: float = 30.0,
        drain_timeout: float = 0.0,
        request_timeout: float | None = None,
        lost_reply_grace: float = DEFAULT_LOST_REPLY_GRACE,
        ssl_context: Any = None,
        **connection_options: Any,
    ) -> None:
        self._memory: str | None = None
        if isinstance(url, ConnectionParameters):
            self._params: ConnectionParameters | None = url
        elif url is not None and url.startswith("memory://"):
            if connection_options:
                raise TypeError(f"memory:// takes no connection options: {connection_options}")
            self._memory = url[len("memory://") :].strip("/") or "default"
            self._params = None
        else:
            self._params = parse_url(
                url or DEFAULT_URL, ssl_context=ssl_context, **connection_options
            )
        if codec is None:
            if encoder is not None or decoder is not None:
                codec = codec_from_functions(encoder or YAML.encode, decoder or YAML.decode)
            else:
                codec = YAML
        self._codec = codec
        decoder_for(None, codec)  # validates the codec choice early
        self.message_exchange = message_exchange
        self.task_exchange = task_exchange
        self.task_queue_name = task_queue
        self.task_prefetch_size = task_prefetch_size
        self.task_prefetch_count = task_prefetch_count
        self.rpc_prefetch_count = rpc_prefetch_count
        self.queue_expires = queue_expires
        self.testing_mode = testing_mode
        self.queue_type = queue_type
        self.blocking_backend = blocking_backend
        self._state = "new"
        self._connection_: Connection | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._cm: Any = None
        self._publisher: Channel | None = None
        self._declarer: Channel | None = None
        self._channel_lock = anyio.Lock()
        self._exchanges: set[str] = set()
        self._reply_queue = f"{message_exchange}-reply-{uuid.uuid4()}"
        self._request_ids = _RequestIds()
        self._reply_consumer: _ConsumerHandle | None = None
        self._reply_exchanges: set[str] = set()  # exchanges the reply queue must be bound to
        self._reply_bound: set[str] = set()  # ... and is bound to on this connection
        self._reply_declared = False
        self._reply_lock = anyio.Lock()
        self._default_exchange_refused = False  # see _reply_exchange
        self.reconnect = reconnect
        self.reconnect_timeout = reconnect_timeout
        self.reconnect_max_delay = reconnect_max_delay
        self.nack_retry_timeout = nack_retry_timeout
        self.drain_timeout = drain_timeout
        self.request_timeout = request_timeout
        self.lost_reply_grace = lost_reply_grace
        self._link_up = anyio.Event()
        self._generation = 0
        self._failure: BaseException | None = None
        self._listeners: list[Callable[[str, BaseException | None], object]] = []
        # the connection each running consumer consumes on (recovery waits for all of them)
        self._consuming_on: dict[_ConsumerHandle, Connection | None] = {}
        self._consumer_handles: set[_ConsumerHandle] = set()
        self._consumers_changed = anyio.Event()
        self._pending = PendingReplies()
        # replies being sent, then acks: scope -> the request's channel
        self._settling: dict[anyio.CancelScope, Channel] = {}
        # channels whose consumer is being stopped -> the deadline of their settles
        self._bounded: dict[Channel, float] = {}
        self._close_deadline = math.inf  # of every settle, once closing
        # publisher channels retired after nacks (weak: a send still waiting on one when it
        # closes must find it here, however late it wakes up)
        self._retired: weakref.WeakSet[Channel] = weakref.WeakSet()
        # requests whose reply a confirm callback will ack: their channel -> how many
        self._handed_off: dict[Channel, int] = {}
        self._handed_off_changed: anyio.Event | None = None
        self._rpc_subscribers: dict[str, tuple[str, _ConsumerHandle]] = {}
        self._broadcast_subscribers: dict[str, Subscriber] = {}
        self._broadcast_queue: str | None = None
        self._broadcast_consumer: _ConsumerHandle | None = None
        self._broadcast_lock = anyio.Lock()
        self._task_queues: dict[str, TaskQueue] = {}
        # what subscribers get as their first argument (the blocking facade in blocking mode)
        self._callback_comm: Any = self
        self._blocking: BlockingCommunicator | None = None

    @property
    def url(self) -> str:
        """The broker URL, with the password hidden."""
        if self._params is None:
            return f"memory://{self._memory}"
        return self._params.redacted_url()

    def __repr__(self) -> str:
        return f"<Communicator {self.url} {self._state}>"

    # ------------------------------------------------------------ lifetime

    async def __aenter__(self) -> Self:
        if self._state != "new":
            raise RuntimeError("a Communicator can be entered only once")
        self._cm = self._lifetime()
        await self._cm.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        result: bool | None = await self._cm.__aexit__(exc_type, exc, tb)
        return result

    def __enter__(self) -> BlockingCommunicator:
        """Synchronous use: ``with kiwi_anyio.connect(url) as comm:`` gives kiwiPy's
        ``RmqThreadCommunicator`` API (:class:`~kiwi_anyio.blocking.BlockingCommunicator`),
        with the event loop in a background thread."""
        if self._state != "new":
            raise RuntimeError("a Communicator can be entered only once")
        self._blocking = open_blocking(self, self.blocking_backend)
        return self._blocking

    def __exit__(self, *exc_info: object) -> None:
        if self._blocking is not None:
            self._blocking.close()

    @asynccontextmanager
    async def _lifetime(self) -> AsyncIterator[None]:
        user_exc: BaseException | None = None
        self._state = "connecting"
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                tg.start_soon(self._pending.run)
                try:
                    await tg.start(self._supervise)
                    self._state = "open"
                    yield
                except BaseException as exc:
                    user_exc = exc
                finally:
                    self._state = "closing"
                    with anyio.CancelScope(shield=True):
                        await self._stop_consumers()
                        await self._delete_rpc_queues()
                    self._fail_pending()
                    tg.cancel_scope.cancel()
        finally:
            self._state = "closed"
            self._link_up.set()  # wake anyone waiting for a link: they see "closed"
            self._fail_pending()
            self._notify("closed", self._failure)
        failure = self._failure
        if failure is not None and (
            user_exc is None or isinstance(user_exc, AMQPError | anyio.get_cancelled_exc_class())
        ):
            raise failure from None
        if user_exc is not None:
            raise user_exc

    # ------------------------------------------------------------ the connection and recovery

    async def _supervise(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Own the connection: connect, and after an unexpected loss reconnect with
        jittered exponential backoff (rotating hosts) until the communicator closes."""
        attempt = 0  # attempts since the link was last up (rotates hosts)
        backoff = _ReconnectBackoff(self.reconnect_max_delay)
        first = True
        while True:
            try:
                async with self._open_connection(attempt) as connection:
                    self._connection_ = connection
                    self._generation += 1
                    self._forget_topology()
                    self._publisher = await connection.channel(publisher_confirms=True)
                    attempt = 0
                    backoff.connected(anyio.current_time())
                    self._link_up.set()
                    if first:
                        first = False
                        task_status.started()
                        self._notify("connected", None)
                    else:
                        await self._wait_consumers_restored(connection)
                        logger.warning("%s: connection recovered", self)
                        self._notify("recovered", None)
                    await anyio.sleep_forever()
            except (ConnectionClosed, ConnectionFailed, ProtocolError) as exc:
                if first or isinstance(exc, AuthenticationError | VhostNotFound):
                    if first:
                        raise
                    self._give_up(exc)
                    return
                if self._link_up.is_set():
                    self._link_up = anyio.Event()
                if not self.reconnect:
                    self._give_up(exc)
                    return
                if attempt == 0:
                    logger.warning("%s: connection lost (%s); reconnecting", self, exc)
                    if isinstance(exc, ConnectionClosed) and exc.reply_code == 320:
                        # the broker shut down (a restart?): the RPC calls waiting in its
                        # queues were transient, and are gone; tasks and their replies are
                        # persistent and survive
                        self._pending.at_risk(
                            self.lost_reply_grace,
                            "the broker shut down the connection (a restart?)",
                            durable=False,
                        )
                    self._notify("disconnected", exc)
                    backoff.lost(anyio.current_time())
                else:
                    logger.info("%s: reconnect attempt %d failed: %s", self, attempt, exc)
            attempt += 1
            await anyio.sleep(backoff.next_delay())

    async def _wait_consumers_restored(self, connection: Connection) -> None:
        """Wait (bounded) until every consumer consumes again on ``connection``."""
        with anyio.move_on_after(self.reconnect_timeout):
            while any(c is not connection for c in self._consuming_on.values()):
                self._consumers_changed = anyio.Event()
                await self._consumers_changed.wait()

    def _consumer_state(self, handle: _ConsumerHandle, connection: Connection | None) -> None:
        if connection is None:
            self._consuming_on.pop(handle, None)
        else:
            self._consuming_on[handle] = connection
        self._consumers_changed.set()

    async def _stop_consumers(self) -> None:
        """Stop every consumer while the connection still works: with ``drain_timeout``,
        stop receiving and let handlers in progress finish for that long; then cancel what
        is left (those messages are requeued; finished ones are answered and acked)."""
        handles = list(self._consumer_handles)
        if self.drain_timeout > 0:
            draining = [h for h in handles if h is not self._reply_consumer]
            for handle in draining:
                handle.draining = True
                if handle.receiving is not None:
                    handle.receiving.cancel()
            with anyio.move_on_after(self.drain_timeout):
                for handle in draining:
                    await handle.done.wait()
        for handle in handles:
            handle.scope.cancel()
        self._bound_settles()
        with anyio.move_on_after(SETTLE_TIMEOUT + 1):
            for handle in handles:
                await handle.done.wait()

    async def _delete_rpc_queues(self) -> None:
        """Delete the queues of the RPC subscribers (bounded): they are durable, and a call
        to a closed communicator must be unroutable, not wait in a queue nobody consumes."""
        queues = [queue for queue, _handle in self._rpc_subscribers.values()]
        self._rpc_subscribers.clear()
        if not queues or self._connection_ is None or not self._connection_.is_open:
            return
        with anyio.move_on_after(SETTLE_TIMEOUT):
            try:
                channel = await self._channel("_declarer", allow_closing=True)
                for queue in queues:
                    await channel.queue_delete(queue)
            except (AMQPError, KiwiError) as exc:
                logger.warning("%s: could not delete the RPC queues: %s", self, exc)

    def _give_up(self, exc: BaseException) -> None:
        self._failure = exc if isinstance(exc, AMQPError) else ConnectionClosed(0, str(exc))
        self._notify("disconnected", exc)
        if self._tg is not None:
            self._tg.cancel_scope.cancel()

    def _forget_topology(self) -> None:
        """A new connection: every channel is gone, and after a broker restart so are the
        non-durable exchanges and queues; declare everything again on first use."""
        self._exchanges.clear()
        self._publisher = None
        self._declarer = None
        self._reply_bound.clear()
        for queue in self._task_queues.values():
            queue._declared = False
            queue._channel = None

    def _notify(self, event: str, error: BaseException | None) -> None:
        for listener in list(self._listeners):
            try:
                listener(event, error)
            except Exception:
                logger.exception("connection listener %r raised", listener)

    def add_connection_listener(
        self, listener: Callable[[str, BaseException | None], object]
    ) -> None:
        """Call ``listener(event, error)`` on ``"connected"``, ``"disconnected"`` (with the
        error), ``"recovered"`` and ``"closed"`` (kiwiPy's close callback; the error is the
        connection failure that ended the communicator, if any)."""
        self._listeners.append(listener)

    def remove_connection_listener(
        self, listener: Callable[[str, BaseException | None], object]
    ) -> None:
        """Stop calling a connection listener."""
        self._listeners.remove(listener)

    @property
    def is_connected(self) -> bool:
        """True while the link to the broker is up (False while recovering)."""
        return self._state == "open" and self._link_up.is_set()

    async def _wait_connection(
        self, timeout: float | None = None, *, allow_closing: bool = False
    ) -> Connection:
        """The current open connection, waiting up to ``reconnect_timeout`` for a recovery.

        Raises:
            CommunicatorClosed: the communicator closed meanwhile.
            ConnectionClosed: no connection within the timeout.
        """
        limit = self.reconnect_timeout if timeout is None else timeout
        with anyio.move_on_after(limit):
            while True:
                self._check_open(allow_closing)
                connection = self._connection_
                if self._link_up.is_set() and connection is not None and connection.is_open:
                    return connection
                if self._link_up.is_set():
                    # lost, and the supervisor has not noticed yet
                    await anyio.sleep(0.01)
                else:
                    await self._link_up.wait()
        self._check_open()
        raise ConnectionClosed(
            0, f"not connected to the broker (waited {limit} s for a reconnection)"
        )

    def _open_connection(self, attempt: int = 0) -> AbstractAsyncContextManager[Connection]:
        if self._memory is not None:
            from . import memory

            return cast("AbstractAsyncContextManager[Connection]", memory.connect(self._memory))
        params = self._params
        assert params is not None
        shift = attempt % len(params.addresses)
        if shift:  # rotate through the hosts of the URL
            params = dataclasses.replace(
                params, addresses=params.addresses[shift:] + params.addresses[:shift]
            )
        return amqp_connect(params)

    def _timeout(self, timeout: Timeout) -> float | None:
        return self.request_timeout if timeout is DEFAULT else timeout

    def _fail_pending(self) -> None:
        self._pending.fail_all(CommunicatorClosed("the communicator closed"))

    def is_closed(self) -> bool:
        """True once the communicator has closed (or is closing)."""
        return self._state in ("closing", "closed")

    def _check_open(self, allow_closing: bool = False) -> None:
        if self._state != "open" and not (allow_closing and self._state == "closing"):
            raise CommunicatorClosed(f"the communicator is {self._state}")

    @property
    def server_properties(self) -> dict[str, Any]:
        """The broker's properties (``product``, ``version``, ``platform`` …)."""
        self._check_open()
        assert self._connection_ is not None
        return self._connection_.server_properties

    def _spawn(self, fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
        assert self._tg is not None
        self._tg.start_soon(fn)

    # ------------------------------------------------------------ channels and topology

    async def _channel(
        self, attr: str, confirms: bool = False, allow_closing: bool = False
    ) -> Channel:
        channel: Channel | None = getattr(self, attr)
        if channel is not None and channel.is_open:
            return channel
        async with self._channel_lock:
            channel = getattr(self, attr)
            if channel is None or not channel.is_open:
                connection = await self._wait_connection(allow_closing=allow_closing)
                channel = await connection.channel(publisher_confirms=confirms)
                setattr(self, attr, channel)
            assert channel is not None
            return channel

    async def _declare(self, operation: Callable[[Channel], Awaitable[Any]], what: str) -> Any:
        """Run a declaration on the declaring channel (reopened after a broker error)."""
        channel = await self._channel("_declarer")
        try:
            return await operation(channel)
        except ChannelClosed as exc:
            raise DeliveryFailed(f"cannot declare {what}: {exc}") from exc

    async def _declare_task_queue(self, name: str, arguments: dict[str, Any]) -> None:
        """Declare a task queue: durable, except in testing mode on RabbitMQ 3.x.

        kiwiPy's testing mode declares its task queues transient (``durable=False``, with
        ``x-expires``), which RabbitMQ 4.3 refuses (deprecated feature
        ``transient_nonexcl_queues``). On RabbitMQ 3.x we declare them exactly as kiwiPy does,
        so kiwiPy peers in testing mode share them; on 4.x (and ``memory://``) durable, with
        the same ``x-expires``. A transient queue of that name made by a kiwiPy peer on a 4.x
        broker that permits it is used as it is.
        """
        durable = not self.testing_mode or not _transient_queues_permitted(
            (await self._wait_connection()).server_properties
        )
        try:
            await self._declare(
                lambda ch: ch.queue_declare(name, durable=durable, arguments=arguments),
                f"task queue {name!r}",
            )
        except DeliveryFailed as exc:
            cause = exc.__cause__
            if not (
                self.testing_mode
                and durable
                and isinstance(cause, ChannelClosed)
                and cause.reply_code == 406
                and "'durable'" in str(cause)
            ):
                raise
            await self._declare(
                lambda ch: ch.queue_declare(name, passive=True),
                f"task queue {name!r}",
            )

    async def _ensure_exchange(self, exchange: str) -> None:
        if exchange in self._exchanges:
            return
        await self._declare(
            lambda ch: ch.exchange_declare(
                exchange, "topic", durable=False, auto_delete=self.testing_mode
            ),
            f"exchange {exchange!r}",
        )
        self._exchanges.add(exchange)

    # ------------------------------------------------------------ consumers

    async def _start_consumer(
        self,
        open_channel: Callable[[Connection], Awaitable[Channel]],
        queue: str,
        on_message: Callable[[Message], Coroutine[Any, Any, None]],
        *,
        what: str,
        no_ack: bool = False,
        consumer_tag: str = "",
        sequential: bool = False,
        exclusive: bool = False,
    ) -> _ConsumerHandle:
        handle = _ConsumerHandle(self._bound_settles)
        assert self._tg is not None
        self._consumer_handles.add(handle)
        handle.done_callbacks.append(lambda: self._consumer_handles.discard(handle))
        await self._tg.start(
            self._run_consumer,
            handle,
            open_channel,
            queue,
            on_message,
            what,
            no_ack,
            consumer_tag,
            sequential,
            exclusive,
        )
        return handle

    async def _run_consumer(
        self,
        handle: _ConsumerHandle,
        open_channel: Callable[[Connection], Awaitable[Channel]],
        queue: str,
        on_message: Callable[[Message], Coroutine[Any, Any, None]],
        what: str,
        no_ack: bool,
        consumer_tag: str,
        sequential: bool,
        exclusive: bool,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Consume ``queue`` until stopped; after a connection loss (or a broker-side
        cancel) open a channel again, redeclare what the consumer needs and resume."""
        started = False
        failures = 0
        try:
            with handle.scope:
                while True:
                    channel: Channel | None = None
                    connection: Connection | None = None
                    try:
                        connection = await self._wait_connection(math.inf)
                        channel = await open_channel(connection)
                        consumer = channel.basic_consume(
                            queue, no_ack=no_ack, consumer_tag=consumer_tag, exclusive=exclusive
                        )
                        async with consumer:
                            if not started:
                                started = True
                                task_status.started()
                            self._consumer_state(handle, connection)
                            handle.channel = channel
                            failures = 0
                            ended: AMQPError | None = None
                            async with anyio.create_task_group() as handlers:
                                pool = _HandlerPool(handlers, on_message)
                                # cancelling this scope stops receiving; handlers go on
                                with anyio.CancelScope() as handle.receiving:
                                    if handle.draining:
                                        handle.receiving.cancel()
                                    try:
                                        async for message in consumer:
                                            if sequential:
                                                await on_message(message)
                                            else:
                                                pool.submit(message)
                                    except ConsumerCancelled as exc:
                                        # the queue was deleted (an operator?): the running
                                        # handlers finish and answer on this channel, then
                                        # we declare the queue again and resume
                                        logger.warning(
                                            "%s: the broker cancelled the consumer of %s (%s)",
                                            self,
                                            what,
                                            exc,
                                        )
                                        ended = exc
                                    except AMQPError as exc:  # raised below, not in a group
                                        ended = exc
                                        handlers.cancel_scope.cancel()
                                    finally:
                                        pool.close()
                            if ended is not None:
                                raise ended
                            if handle.draining:
                                return  # drained: every handler finished
                    except (AMQPError, DeliveryFailed, DuplicateSubscriberIdentifier) as exc:
                        if not started:
                            raise
                        if self._state != "open":
                            return
                        # lost: our connection dropped (perhaps already replaced by a new
                        # one); then wait for no backoff, the supervisor reconnects
                        current = self._connection_
                        lost = (
                            connection is None
                            or connection is not current
                            or not connection.is_open
                        )
                        if not lost:
                            failures += 1
                            logger.error("consumer of %s stopped (%s); restarting", what, exc)
                            await anyio.sleep(min(30.0, 0.5 * 2**failures) * random.random())
                    finally:
                        handle.channel = None
                        if channel is not None:
                            if channel.is_open:
                                with anyio.CancelScope(shield=True):
                                    await self._wait_handed_off(channel)
                                    await channel.aclose()
                            self._bounded.pop(channel, None)
        finally:
            self._consumer_state(handle, None)
            handle.finished()

    async def _call(self, subscriber: Subscriber, *args: Any) -> Any:
        """Call a subscriber: ``async def`` in the loop, plain functions in a worker thread."""
        if _is_async(subscriber):
            return await subscriber(*args)
        result = await anyio.to_thread.run_sync(subscriber, *args, abandon_on_cancel=True)
        if inspect.iscoroutine(result):  # e.g. a plain wrapper around an async function
            result = await result
        return result

    def _decode(self, message: Message) -> Any:
        codec = decoder_for(message.properties.content_type, self._codec)
        return codec.decode(message.body)

    async def _reject_undecodable(
        self, message: Message, exc: UndecodableMessage, exchange: str, *, with_host: bool = False
    ) -> None:
        logger.warning(
            "rejected undecodable message %s from %r (routing key %r): %s",
            message.delivery_tag,
            message.exchange,
            message.routing_key,
            exc,
        )
        if message.properties.reply_to and message.properties.correlation_id:
            try:
                await self._send_reply(
                    message, wire.exception_reply(exc, with_host=with_host), exchange
                )
            except AMQPError as error:
                logger.warning("could not tell the sender: %s", error)
        if not message.settled and message.channel.is_open:
            message.reject(requeue=False)

    # ------------------------------------------------------------ publishing

    async def _publish(
        self,
        body: bytes,
        *,
        exchange: str,
        routing_key: str,
        properties: Properties,
        mandatory: bool,
        what: str,
        allow_closing: bool = False,
        prepare: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Publish with confirms; after a lost link wait for recovery and send it again.

        ``prepare`` declares what the message needs (exchange, queue, binding); it is
        called before each attempt and is cheap once done on the current connection, so a
        message resent after a broker restart finds its topology declared again.
        """
        redeclared = False
        deadline: float | None = None  # of resending: set when the link is first lost
        nack_deadline: float | None = None  # of resending after nacks
        nacks = 0
        while True:
            connection = self._connection_
            channel: Channel | None = None
            try:
                generation = self._generation
                if prepare is not None:
                    await prepare()
                channel = self._publisher
                if channel is None or not channel.is_open:
                    channel = await self._channel("_publisher", True, allow_closing)
                if self._generation != generation:
                    continue  # reconnected meanwhile: declare again on the new connection
                connection = self._connection_
                await channel.basic_publish(
                    body,
                    exchange=exchange,
                    routing_key=routing_key,
                    properties=properties,
                    mandatory=mandatory,
                )
                return
            except MessageReturned:
                raise
            except PublishNacked as exc:
                # the broker refused it: a quorum queue electing a new leader (a fail-over),
                # an internal error, a full queue with reject-publish. Send it again for a
                # few seconds with backoff (the first two pass), then give up.
                now = anyio.current_time()
                if nack_deadline is None:
                    nack_deadline = now + self.nack_retry_timeout
                if now < nack_deadline and self._state == "open":
                    nacks += 1
                    logger.info("the broker nacked %s; sending it again", what)
                    # on a fresh channel: after a quorum queue's leader moved, RabbitMQ 3.10
                    # went on nacking every publish on a channel that had talked to it
                    # during the election (for as long as we tried), a new one was fine
                    if channel is not None:
                        self._retire_publisher(channel)
                    await anyio.sleep(min(0.05 * 2**nacks, 1.0))
                    continue
                raise DeliveryFailed(f"cannot send {what}: the broker nacked it") from exc
            except (ChannelClosed, ConnectionClosed) as exc:
                if self._state not in ("open", "closing" if allow_closing else "open"):
                    raise CommunicatorClosed(
                        f"the communicator closed while sending {what}"
                    ) from exc
                if channel is not None and channel in self._retired:
                    continue  # we closed that channel (see _retire_publisher): not confirmed
                lost = connection is None or not connection.is_open
                if lost and self.reconnect:
                    now = anyio.current_time()
                    if deadline is None:  # the first loss: resend for reconnect_timeout
                        deadline = now + self.reconnect_timeout
                    if now < deadline:
                        # not confirmed before the link dropped: send it again after
                        # recovery (at-least-once: seen twice perhaps, never zero times)
                        logger.info("resending %s after the connection was lost", what)
                        continue
                if not redeclared and exc.reply_code == 404:
                    # the exchange vanished (auto-delete, a broker restart, an operator):
                    # declare it (and what depends on it) again, once
                    redeclared = True
                    self._forget_exchange(exchange)
                    await self._ensure_exchange(exchange)
                    continue
                raise DeliveryFailed(f"cannot send {what}: {exc}") from exc

    def _retire_publisher(self, channel: Channel) -> None:
        """Publish on a new channel from now on; close ``channel`` once its confirms are in."""
        if self._publisher is not channel or self._tg is None:
            return  # another send retired it already
        self._publisher = None
        self._retired.add(channel)
        self._tg.start_soon(self._close_retired, channel)

    async def _close_retired(self, channel: Channel) -> None:
        """Close a retired publisher channel after a grace period for its confirms (sends
        still unconfirmed then are sent again, see :meth:`_publish`)."""
        try:
            await anyio.sleep(SETTLE_TIMEOUT)
        finally:
            with anyio.CancelScope(shield=True):
                await channel.aclose()

    def _forget_exchange(self, exchange: str) -> None:
        self._exchanges.discard(exchange)
        self._reply_bound.discard(exchange)
        for queue in self._task_queues.values():
            if queue.exchange == exchange:
                queue._declared = False

    async def _send_request(
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
        message_id = self._request_ids.next_hex()
        correlation_id = _dashed(message_id)  # kiwiPy's form of a UUID, with dashes
        future: Future[Any] | None = None
        if prepare is not None:
            await prepare()  # fail early (e.g. a forbidden exchange) before any reply setup
        if not no_reply:
            await self._ensure_reply_queue(exchange)
            future = self._pending.add(correlation_id, what, timeout, durable=persistent)
        properties = Properties(
            content_type=self._codec.content_type,
            delivery_mode=2 if persistent else 1,
            correlation_id=correlation_id,
            reply_to=self._reply_queue,
            message_id=message_id,
            # a call nobody took in time is dropped by the broker, not handled too late
            expiration=None if persistent or timeout is None else _expiration(timeout),
        )
        try:
            await self._publish(
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
                self._pending.discard(correlation_id)
            raise
        return future

    async def _settle(
        self,
        message: Message,
        reply: dict[str, Any] | None,
        exchange: str,
        *,
        nowait: bool = True,
    ) -> bool:
        """Send the final reply, then acknowledge.

        Returns True when that was handed off: the reply is queued and a confirm callback
        acks the request (:meth:`_settle_nowait`; the consumer's channel stays open until it
        has, see :meth:`_wait_handed_off`). Else it was done here, shielded, so a request
        whose handling finished is answered and acked even when the communicator is closing
        (a request cancelled mid-handling is requeued instead; nothing is done twice).
        """
        if nowait and self._settle_nowait(message, reply, exchange):
            return True
        with anyio.CancelScope(shield=True) as scope:
            # no deadline while the communicator is open (a broker that blocks publishing
            # delays the reply; giving up would requeue a finished task); closing bounds it
            channel = message.channel
            if self._state != "open" or channel in self._bounded:
                scope.deadline = anyio.current_time() + SETTLE_TIMEOUT
            self._settling[scope] = channel
            try:
                if reply is not None:
                    await self._send_reply(message, reply, exchange)
                if channel.is_open:
                    message.ack()
            finally:
                del self._settling[scope]
        return False

    def _settle_nowait(self, message: Message, reply: dict[str, Any] | None, exchange: str) -> bool:
        """The common case of :meth:`_settle` without a task switch or a cancel scope:
        queue the reply on the open publisher channel and ack the request from the
        confirm callback. False: take the slow path (closing, a blocked broker, a reply
        too large to send, no publisher channel)."""
        channel = message.channel
        if self._state != "open" or channel in self._bounded or not channel.is_open:
            return False
        if reply is None:
            message.ack()
            return True
        publisher = self._publisher
        reply_to = message.properties.reply_to
        if publisher is None or not publisher.is_open or not reply_to:
            return False
        body, properties = self._encode_reply(message, reply)

        def confirmed(error: BaseException | None) -> None:
            forget = True
            try:
                if error is not None and channel.is_open and not message.settled:
                    if self._tg is not None and self._state == "open":
                        # the publisher channel failed under it (an exchange deleted, a
                        # nack): the slow path resends (after a recovery too), then acks
                        logger.info("sending the reply to %r again: %s", reply_to, error)
                        self._tg.start_soon(self._settle_again, message, reply, exchange)
                        forget = False  # still handed off: _settle_again forgets it
                    else:
                        message.nack(requeue=True)
                elif error is None and channel.is_open and not message.settled:
                    message.ack()
            finally:
                if forget:
                    self._forget_handed_off(channel)

        self._handed_off[channel] = self._handed_off.get(channel, 0) + 1
        try:
            publisher.publish_nowait(
                body,
                exchange=self._reply_exchange(exchange),
                routing_key=reply_to,
                properties=properties,
                on_confirm=confirmed,
            )
        except (anyio.WouldBlock, AMQPError, ValueError):
            # blocked, too large, a closed channel: the slow path copes
            self._forget_handed_off(channel)
            return False
        except BaseException:
            self._forget_handed_off(channel)
            raise
        return True

    def _forget_handed_off(self, channel: Channel) -> None:
        handed = self._handed_off
        count = handed[channel] - 1
        if count:
            handed[channel] = count
            return
        del handed[channel]
        changed = self._handed_off_changed
        if changed is not None:
            changed.set()

    async def _settle_again(self, message: Message, reply: dict[str, Any], exchange: str) -> None:
        """A handed-off reply failed: send it the slow way (then ack), or requeue."""
        try:
            await self._settle(message, reply, exchange, nowait=False)
        except KiwiError as exc:
            logger.warning("request %s not answered: %s", message.delivery_tag, exc)
        finally:
            if not message.settled and message.channel.is_open:
                message.nack(requeue=True)  # not answered in time: requeued
            self._forget_handed_off(message.channel)

    async def _wait_handed_off(self, channel: Channel) -> None:
        """Before a consumer's channel closes: wait (up to SETTLE_TIMEOUT, and no longer than
        the settles bounded by stopping or closing) until the replies handed to confirm
        callbacks have acked their requests."""
        deadline = min(
            anyio.current_time() + SETTLE_TIMEOUT,
            self._bounded.get(channel, math.inf),
            self._close_deadline,
        )
        with anyio.CancelScope(deadline=deadline):
            while channel in self._handed_off:
                changed = self._handed_off_changed
                if changed is None or changed.is_set():
                    changed = self._handed_off_changed = anyio.Event()
                await changed.wait()

    def _bound_settles(self, channel: Channel | None = None) -> None:
        """Closing (or stopping the consumer on ``channel``): give every reply still being
        settled (on that channel) ``SETTLE_TIMEOUT`` seconds, and those settled later too."""
        deadline = anyio.current_time() + SETTLE_TIMEOUT
        if channel is not None:
            self._bounded[channel] = min(self._bounded.get(channel, math.inf), deadline)
        else:
            self._close_deadline = min(self._close_deadline, deadline)
        for scope, on in self._settling.items():
            if channel is None or on is channel:
                scope.deadline = min(scope.deadline, deadline)

    def _encode_reply(self, request: Message, reply: dict[str, Any]) -> tuple[bytes, Properties]:
        """The body and properties of a reply (an exception reply if it cannot be encoded)."""
        try:
            body = self._codec.encode(reply)
        except (TypeError, ValueError) as exc:
            body = self._codec.encode(wire.exception_reply(exc))
        properties = Properties(
            content_type=self._codec.content_type,
            correlation_id=request.properties.correlation_id,
            # a task's reply is as durable as the task: it waits out a broker restart in the
            # (durable) reply queue
            delivery_mode=request.properties.delivery_mode,
        )
        return body, properties

    def _reply_exchange(self, exchange: str) -> str:
        """Where a reply to a request that came through ``exchange`` is published."""
        return exchange if self._default_exchange_refused else REPLY_EXCHANGE

    async def _send_reply(self, request: Message, reply: dict[str, Any], exchange: str) -> None:
        reply_to = request.properties.reply_to
        if not reply_to:
            logger.warning("cannot reply to message %s: it has no reply_to", request.delivery_tag)
            return
        body, properties = self._encode_reply(request, reply)
        what = f"reply to {reply_to!r}"
        try:
            try:
                await self._publish(
                    body,
                    exchange=self._reply_exchange(exchange),
                    routing_key=reply_to,
                    properties=properties,
                    mandatory=False,
                    what=what,
                    allow_closing=True,
                )
            except DeliveryFailed as exc:
                cause = exc.__cause__
                if not (
                    self._reply_exchange(exchange) == REPLY_EXCHANGE
                    and isinstance(cause, ChannelClosed)
                    and cause.reply_code == 403
                ):
                    raise
                # this user may not publish to the default exchange: reply as kiwiPy does,
                # through the request's exchange (and its binding of the reply queue)
                logger.info("%s: replying through the request's exchange: %s", self, cause)
                self._default_exchange_refused = True
                await self._publish(
                    body,
                    exchange=exchange,
                    routing_key=reply_to,
                    properties=properties,
                    mandatory=False,
                    what=what,
                    allow_closing=True,
                )
        except ProtocolError as exc:  # refused before sending (e.g. over max_message_size)
            await self._publish(
                self._codec.encode(wire.exception_reply(exc)),
                exchange=self._reply_exchange(exchange),
                routing_key=reply_to,
                properties=properties,
                mandatory=False,
                what=what,
                allow_closing=True,
            )

    # ------------------------------------------------------------ replies

    async def _ensure_reply_queue(self, exchange: str) -> None:
        """Make sure replies sent through ``exchange`` reach us.

        The reply queue is not exclusive (it expires 60 s after we are gone), so it survives
        a dropped connection and replies published meanwhile wait in it. kiwiPy workers only
        need its name bound on the exchange they reply through.
        """
        if exchange in self._reply_bound:
            return
        async with self._reply_lock:
            if exchange in self._reply_bound:
                return
            self._reply_exchanges.add(exchange)
            try:
                if self._reply_consumer is None:
                    self._reply_consumer = await self._start_consumer(
                        self._open_reply_channel,
                        self._reply_queue,
                        self._on_reply,
                        what="reply queue",
                        sequential=True,
                    )
                else:
                    await self._ensure_exchange(exchange)
                    await self._declare(
                        lambda ch: ch.queue_bind(
                            self._reply_queue, exchange, routing_key=self._reply_queue
                        ),
                        "reply queue binding",
                    )
                    self._reply_bound.add(exchange)
            except BaseException:
                # do not keep (and retry on every later send) a binding that failed
                self._reply_exchanges.discard(exchange)
                raise

    async def _open_reply_channel(self, connection: Connection) -> Channel:
        if self._reply_declared:
            probe = await connection.channel()
            try:
                await probe.queue_declare(self._reply_queue, passive=True)
            except ChannelClosed as exc:
                if exc.reply_code == 404:
                    count = self._pending.at_risk(
                        self.lost_reply_grace,
                        "the reply queue was lost while disconnected (it expired, or was deleted)",
                        durable=True,
                    )
                    logger.error(
                        "%s: the reply queue was lost; %d requests may never be answered",
                        self,
                        count,
                    )
            finally:
                await probe.aclose()
        channel = await connection.channel()
        # Durable (RabbitMQ 4.3 refuses a transient queue that is not exclusive) and not
        # exclusive (replies wait in it while the link is down); x-expires removes it once we
        # are gone.
        await channel.queue_declare(
            self._reply_queue, durable=True, arguments={"x-expires": wire.REPLY_QUEUE_EXPIRES}
        )
        self._reply_declared = True
        for exchange in list(self._reply_exchanges):
            await self._ensure_exchange(exchange)
            await channel.queue_bind(self._reply_queue, exchange, routing_key=self._reply_queue)
            self._reply_bound.add(exchange)
        return channel

    async def _on_reply(self, message: Message) -> None:
        # Replies are acknowledged (not consumed with no_ack): one delivered into a link that
        # is dropping goes back to the queue and reaches us after recovery.
        try:
            self._resolve_reply(message)
        finally:
            if not message.settled and message.channel.is_open:
                try:
                    message.ack()
                except KiwiError:  # the link dropped: the broker redelivers it
                    pass

    def _resolve_reply(self, message: Message) -> None:
        correlation_id = message.properties.correlation_id or ""
        future = self._pending.pop(correlation_id)
        if future is None or future.done():
            logger.debug("dropped a reply for unknown correlation id %r", correlation_id)
            return
        try:
            kind, value = wire.parse_reply(self._decode(message))
        except UndecodableMessage as exc:
            future.set_exception(exc)
            return
        if kind is wire.PENDING:
            future.set_result(self._pending.add(correlation_id, "the delegated request", None))
        elif kind is wire.CANCELLED:
            future.cancel()
        elif kind == wire.EXCEPTION_KEY:
            future.set_exception(value)
        else:
            future.set_result(value)

    # ------------------------------------------------------------ tasks

    def task_queue(
        self,
        name: str,
        prefetch_count: int | None = None,
        prefetch_size: int = 0,
    ) -> TaskQueue:
        """A task queue on the task exchange (declared durable on first use)."""
        self._check_open()
        queue = self._task_queues.get(name)
        if queue is None:
            queue = TaskQueue(
                self,
                name,
                exchange=self.task_exchange,
                prefetch_count=self.task_prefetch_count
                if prefetch_count is None
                else prefetch_count,
                prefetch_size=prefetch_size,
            )
            self._task_queues[name] = queue
        return queue

    def _default_queue(self) -> TaskQueue:
        return self.task_queue(
            self.task_queue_name, self.task_prefetch_count, self.task_prefetch_size
        )

    async def task_send(
        self, task: Any, no_reply: bool = False, *, timeout: Timeout = DEFAULT
    ) -> Future[Any] | None:
        """Send a task to the default queue (see :meth:`TaskQueue.task_send`)."""
        return await self._default_queue().task_send(task, no_reply, timeout=timeout)

    async def add_task_subscriber(
        self, subscriber: Subscriber, identifier: str | None = None
    ) -> str:
        """Subscribe to the default task queue (see :meth:`TaskQueue.add_task_subscriber`)."""
        return await self._default_queue().add_task_subscriber(subscriber, identifier)

    async def remove_task_subscriber(self, identifier: str) -> None:
        """Remove a subscriber of the default task queue."""
        self._check_open()
        await self._default_queue().remove_task_subscriber(identifier)

    def task_subscriber(self, subscriber: Subscriber, identifier: str | None = None) -> Any:
        """``async with comm.task_subscriber(fn) as ident:`` on the default task queue."""
        return self._default_queue().task_subscriber(subscriber, identifier)

    # ------------------------------------------------------------ RPC

    async def rpc_send(
        self, recipient_id: str, msg: Any, *, timeout: Timeout = DEFAULT
    ) -> Future[Any]:
        """Call the RPC subscriber ``recipient_id``; returns a future of its reply.

        Args:
            recipient_id: the subscriber's identifier.
            msg: the message (any value the codec can encode).
            timeout: seconds the future waits for the reply before it fails with
                :class:`~kiwi_anyio.RequestTimeout`; a call not taken by the subscriber by
                then expires in the broker (it is not handled late). ``None``: no limit.
                Default: the communicator's ``request_timeout``.

        Raises:
            UnroutableError: no subscriber with this identifier exists.

        Cancellation: cancelled before the broker's confirm, the call may or may not have
        been sent, and no future is returned.
        """
        self._check_open()
        await self._ensure_exchange(self.message_exchange)
        try:
            future = await self._send_request(
                self._codec.encode(msg),
                exchange=self.message_exchange,
                routing_key=wire.rpc_routing_key(recipient_id),
                persistent=False,
                no_reply=False,
                what=f"RPC to {recipient_id!r}",
                timeout=self._timeout(timeout),
            )
        except MessageReturned as exc:
            raise UnroutableError(f"no RPC subscriber {recipient_id!r}: {exc}") from None
        assert future is not None
        return future

    async def add_rpc_subscriber(
        self, subscriber: Subscriber, identifier: str | None = None
    ) -> str:
        """Add ``subscriber(comm, msg)`` for RPCs to ``identifier``; returns the identifier.

        Raises:
            DuplicateSubscriberIdentifier: this identifier is taken, here or by another
                kiwi_anyio process on the broker.
            ValueError: the identifier contains ``*`` or ``#`` (they would act as wildcards).
        """
        self._check_open()
        identifier = identifier or _new_id()
        if "*" in identifier or "#" in identifier:
            raise ValueError(f"an RPC identifier cannot contain '*' or '#': {identifier!r}")
        if identifier in self._rpc_subscribers:
            raise DuplicateSubscriberIdentifier(f"RPC subscriber {identifier!r} already exists")
        queue = f"{self.message_exchange}.rpc.{identifier}"
        placeholder = _ConsumerHandle(self._bound_settles)
        self._rpc_subscribers[identifier] = (queue, placeholder)

        async def open_channel(connection: Connection) -> Channel:
            return await self._open_rpc_channel(connection, queue, identifier)

        async def on_rpc(message: Message) -> None:
            await self._on_rpc(subscriber, message)

        try:
            handle = await self._start_consumer(
                open_channel,
                queue,
                on_rpc,
                what=f"RPC subscriber {identifier!r}",
                consumer_tag=identifier,
                # the one consumer of the queue: another process's is refused (403)
                exclusive=True,
            )
        except ChannelClosed as exc:
            self._rpc_subscribers.pop(identifier, None)
            if exc.reply_code == 403:
                raise DuplicateSubscriberIdentifier(
                    f"RPC subscriber {identifier!r} already exists in another process"
                ) from None
            raise
        except BaseException:
            self._rpc_subscribers.pop(identifier, None)
            raise
        self._rpc_subscribers[identifier] = (queue, handle)
        return identifier

    async def _open_rpc_channel(
        self, connection: Connection, queue: str, identifier: str
    ) -> Channel:
        """Declare the subscriber's queue and binding on a new channel.

        The queue is durable, not exclusive, so that it outlives a dropped link of ours:
        calls wait in it while we reconnect, and calls we were handling are delivered again.
        It expires ``queue_expires`` ms after its consumer is gone, and is deleted when the
        subscriber is removed or the communicator closes. Its consumer is exclusive, which
        keeps an identifier to one process.
        """
        await self._ensure_exchange(self.message_exchange)
        channel = await connection.channel(prefetch_count=self.rpc_prefetch_count or None)
        try:
            await channel.queue_declare(
                queue,
                durable=True,
                arguments={"x-message-ttl": wire.RPC_MESSAGE_TTL, "x-expires": self.queue_expires},
            )
            await channel.queue_bind(
                queue, self.message_exchange, routing_key=wire.rpc_routing_key(identifier)
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

    async def remove_rpc_subscriber(self, identifier: str) -> None:
        """Remove an RPC subscriber.

        Raises:
            ValueError: no subscriber has this identifier.
        """
        self._check_open()
        try:
            queue, handle = self._rpc_subscribers.pop(identifier)
        except KeyError:
            raise ValueError(f"unknown RPC subscriber {identifier!r}") from None
        await handle.stop()
        with anyio.CancelScope(shield=True):
            try:
                await self._declare(lambda ch: ch.queue_delete(queue), f"RPC queue {queue!r}")
            except (DeliveryFailed, AMQPError) as exc:
                logger.warning("could not delete RPC queue %r: %s", queue, exc)

    @asynccontextmanager
    async def rpc_subscriber(
        self, subscriber: Subscriber, identifier: str | None = None
    ) -> AsyncIterator[str]:
        """``async with comm.rpc_subscriber(fn, "id") as ident:``; removed on exit."""
        ident = await self.add_rpc_subscriber(subscriber, identifier)
        try:
            yield ident
        finally:
            with anyio.CancelScope(shield=True):
                if ident in self._rpc_subscribers and self._state == "open":
                    await self.remove_rpc_subscriber(ident)

    async def _on_rpc(self, subscriber: Subscriber, message: Message) -> None:
        handed_off = False  # to a confirm callback, which acks
        try:
            try:
                msg = self._decode(message)
            except UndecodableMessage as exc:
                await self._reject_undecodable(message, exc, self.message_exchange)
                return
            try:
                result = await self._call(subscriber, self._callback_comm, msg)
                while _is_future_like(result):
                    await self._send_reply(message, wire.pending_reply(), self.message_exchange)
                    result = await _resolve(result)
            except concurrent.futures.CancelledError as exc:
                reply = wire.cancelled_reply(str(exc) or None)
            except Exception as exc:
                logger.info("RPC subscriber %r raised %r", subscriber, exc)
                reply = wire.exception_reply(exc)
            else:
                reply = wire.result_reply(result)
            handed_off = await self._settle(message, reply, self.message_exchange)
        except KiwiError as exc:  # the link dropped, or the communicator closes
            logger.warning("RPC %s not answered: %s", message.delivery_tag, exc)
        finally:
            if not handed_off and not message.settled and message.channel.is_open:
                message.nack(requeue=True)

    # ------------------------------------------------------------ broadcasts

    async def broadcast_send(
        self,
        body: Any,
        sender: Any = None,
        subject: Any = None,
        correlation_id: Any = None,
    ) -> bool:
        """Send a broadcast to every subscriber whose filters match; returns True once the
        broker confirmed it (nobody listening is not an error)."""
        self._check_open()
        await self._ensure_exchange(self.message_exchange)
        await self._publish(
            self._codec.encode(wire.encode_broadcast(body, sender, subject, correlation_id)),
            exchange=self.message_exchange,
            routing_key=wire.BROADCAST_ROUTING_KEY,
            properties=Properties(content_type=self._codec.content_type, delivery_mode=1),
            mandatory=False,
            what="broadcast",
        )
        return True

    async def add_broadcast_subscriber(
        self, subscriber: Subscriber, identifier: str | None = None
    ) -> str:
        """Add ``subscriber(comm, body, sender, subject, correlation_id)``; returns its id.

        Wrap it in a :class:`~kiwi_anyio.BroadcastFilter` to receive only some subjects or
        senders. Subscribers receive broadcasts in order; one that raises is logged and the
        others still get the message.
        """
        self._check_open()
        identifier = identifier or _new_id()
        if identifier in self._broadcast_subscribers:
            raise DuplicateSubscriberIdentifier(
                f"broadcast subscriber {identifier!r} already exists"
            )
        self._broadcast_subscribers[identifier] = subscriber
        try:
            async with self._broadcast_lock:
                if self._broadcast_consumer is None:
                    queue = self._broadcast_queue = f"broadcast-{_new_id()}"
                    self._broadcast_consumer = await self._start_consumer(
                        self._open_broadcast_channel,
                        queue,
                        self._on_broadcast,
                        what="broadcasts",
                        sequential=True,
                    )
        except BaseException:
            self._broadcast_subscribers.pop(identifier, None)
            raise
        return identifier

    async def _open_broadcast_channel(self, connection: Connection) -> Channel:
        queue = self._broadcast_queue
        assert queue is not None
        await self._ensure_exchange(self.message_exchange)
        # no prefetch: with one, RabbitMQ hands a broadcast consumer its messages in small
        # batches, which costs a quarter more client CPU per broadcast (benchmarks/)
        channel = await connection.channel()
        await channel.queue_declare(
            queue, exclusive=True, arguments={"x-message-ttl": wire.BROADCAST_MESSAGE_TTL}
        )
        await channel.queue_bind(
            queue, self.message_exchange, routing_key=wire.BROADCAST_ROUTING_KEY
        )
        return channel

    async def remove_broadcast_subscriber(self, identifier: str) -> None:
        """Remove a broadcast subscriber; the last one removed deletes the queue, so no
        broadcasts pile up for nobody.

        Raises:
            ValueError: no subscriber has this identifier.
        """
        self._check_open()
        try:
            del self._broadcast_subscribers[identifier]
        except KeyError:
            raise ValueError(f"unknown broadcast subscriber {identifier!r}") from None
        async with self._broadcast_lock:
            if not self._broadcast_subscribers and self._broadcast_consumer is not None:
                consumer, self._broadcast_consumer = self._broadcast_consumer, None
                queue, self._broadcast_queue = self._broadcast_queue, None
                await consumer.stop()
                if queue is not None:
                    with anyio.CancelScope(shield=True):
                        try:
                            await self._declare(
                                lambda ch: ch.queue_delete(queue), "broadcast queue"
                            )
                        except AMQPError as exc:
                            logger.warning("could not delete broadcast queue %r: %s", queue, exc)

    @asynccontextmanager
    async def broadcast_subscriber(
        self, subscriber: Subscriber, identifier: str | None = None
    ) -> AsyncIterator[str]:
        """``async with comm.broadcast_subscriber(fn) as ident:``; removed on exit."""
        ident = await self.add_broadcast_subscriber(subscriber, identifier)
        try:
            yield ident
        finally:
            with anyio.CancelScope(shield=True):
                if ident in self._broadcast_subscribers and self._state == "open":
                    await self.remove_broadcast_subscriber(ident)

    async def _on_broadcast(self, message: Message) -> None:
        try:
            try:
                body, sender, subject, correlation_id = wire.decode_broadcast(self._decode(message))
            except UndecodableMessage as exc:
                await self._reject_undecodable(message, exc, self.message_exchange)
                return
            args = (self._callback_comm, body, sender, subject, correlation_id)

            async def deliver(subscriber: Subscriber) -> None:
                try:
                    if isinstance(subscriber, BroadcastFilter):
                        if subscriber.is_filtered(sender, subject):
                            return
                        subscriber = subscriber.subscriber
                    await self._call(subscriber, *args)
                except Exception:
                    logger.exception("broadcast subscriber %r raised", subscriber)

            async with anyio.create_task_group() as tg:
                for subscriber in list(self._broadcast_subscribers.values()):
                    tg.start_soon(deliver, subscriber)
            message.ack()
        except KiwiError as exc:  # the link dropped, or the communicator closes
            logger.warning("broadcast %s not acknowledged: %s", message.delivery_tag, exc)
        finally:
            if not message.settled and message.channel.is_open:
                message.nack(requeue=True)


def _expiration(timeout: float) -> str:
    """The ``expiration`` property (ms, at least 1) of a request with this timeout."""
    return str(max(1, math.ceil(timeout * 1000)))


def _transient_queues_permitted(server_properties: Mapping[str, Any]) -> bool:
    """Whether a transient queue that is not exclusive may be declared: on RabbitMQ 3.x.

    RabbitMQ 4.3 denies them by default and 4.0-4.2 may be configured to; ``memory://``
    follows 4.3.
    """
    product = server_properties.get("product")
    version = server_properties.get("version")
    if isinstance(product, bytes):
        product = product.decode("utf-8", "replace")
    if isinstance(version, bytes):
        version = version.decode("utf-8", "replace")
    if product != "RabbitMQ" or not isinstance(version, str):
        return False
    major = version.split(".", 1)[0]
    return major.isdigit() and int(major) < 4


def connect(url: str | ConnectionParameters | None = None, **options: Any) -> Communicator:
    """Create a communicator: ``async with kiwi_anyio.connect(url) as comm:``.

    ``url`` defaults to the ``KIWI_ANYIO_URL`` environment variable, else kiwiPy's
    ``amqp://guest:guest@127.0.0.1/``. Options are those of :class:`Communicator`.
    """
    if url is None:
        url = os.environ.get("KIWI_ANYIO_URL") or DEFAULT_URL
    return Communicator(url, **options)

"""Task queues: durable queues of persistent tasks, each acknowledged only once handled.

:class:`Tasks` declares task queues (kiwiPy's arguments, so kiwiPy peers share them) and makes
:class:`TaskQueue` objects; a queue sends tasks (:meth:`TaskQueue.task_send`), serves them to
its subscribers through a recovering consumer (push), or hands them out one at a time
(:meth:`TaskQueue.next_task`, ``async for``: pull) as :class:`IncomingTask`.

It uses the link, the consumers, :mod:`.requests` and :mod:`.serving`; it must not import the
Communicator (it gets what it needs when created).
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, Final, Literal, overload

import anyio

from .. import _wire as wire
from .. import typed
from .._logctx import LogContext
from .._pending import DEFAULT, Timeout
from ..channel import Channel, Connection, Message
from ..codecs import Codec
from ..exceptions import (
    ChannelClosed,
    DeliveryFailed,
    DuplicateSubscriberIdentifier,
    KiwiError,
    MessageReturned,
    QueueEmpty,
    Retry,
    TaskRejected,
    UndecodableMessage,
    UnroutableError,
)
from ..futures import Future
from ..robust.consumer import ConsumerHandle, Consumers
from ..robust.link import Link, broker_version
from ..robust.publisher import Publisher
from .pull import IncomingTask, TaskIterator
from .redelivery import DEFAULT_MAX_DELIVERIES, DeadLetter, DeadLetters, Redelivery, Verdict
from .requests import Requests
from .serving import Serving, Subscriber

__all__ = ["IncomingTask", "TaskQueue", "Tasks", "transient_queues_permitted"]

logger = logging.getLogger("kiwi_anyio.communicator")

REQUEUE_DELAY: Final = 1.0  # seconds before a task every subscriber rejected is requeued
NEXT_TASK_POLL: Final = 0.05
ANSWERED_KEEP: Final = 10_000  # answered task ids remembered, against duplicate runs


class _Unset:
    """An option not given (``None`` means something)."""

    def __repr__(self) -> str:
        return "<not given>"


UNSET: Final = _Unset()
#: ``consumer_timeout=None``: the longest timeout RabbitMQ takes (a signed 32-bit ms count,
#: about 24.8 days), as "never" is not an option.
MAX_CONSUMER_TIMEOUT_MS: Final = 2**31 - 1


def consumer_timeout_supported(server_properties: Mapping[str, Any]) -> bool:
    """Whether the broker takes ``x-consumer-timeout`` on ``basic.consume``: RabbitMQ 3.12+."""
    product, version = broker_version(server_properties)
    return product == "RabbitMQ" and version >= (3, 12)


def transient_queues_permitted(server_properties: Mapping[str, Any]) -> bool:
    """Whether a transient queue that is not exclusive may be declared: on RabbitMQ 3.x.

    RabbitMQ 4.3 denies them by default and 4.0-4.2 may be configured to; ``memory://``
    follows 4.3.
    """
    product, version = broker_version(server_properties)
    return product == "RabbitMQ" and bool(version) and version[0] < 4


class Tasks:
    """The task pattern of one communicator: its queues and how they are declared."""

    def __init__(
        self,
        link: Link,
        consumers: Consumers,
        requests: Requests,
        serving: Serving,
        codec: Codec,
        publisher: Publisher,
        *,
        exchange: str,
        testing_mode: bool,
        queue_type: str | None,
        timeout: Callable[[Timeout], float | None],
    ) -> None:
        self.link = link
        self.consumers = consumers
        self.requests = requests
        self.serving = serving
        self.codec = codec
        self.publisher = publisher
        self.exchange = exchange
        self.testing_mode = testing_mode
        self.queue_type = queue_type
        self.timeout = timeout
        self.queues: dict[str, TaskQueue] = {}
        link.on_new_connection(self._forget)
        link.on_exchange_forgotten(self._forget_exchange)

    def queue(
        self,
        name: str,
        prefetch_count: int,
        prefetch_size: int,
        max_deliveries: int | None = DEFAULT_MAX_DELIVERIES,
        consumer_timeout: float | _Unset | None = UNSET,
    ) -> TaskQueue:
        """The task queue ``name`` (one object per name: later options are ignored)."""
        queue = self.queues.get(name)
        if queue is None:
            queue = self.queues[name] = TaskQueue(
                self,
                name,
                exchange=self.exchange,
                prefetch_count=prefetch_count,
                prefetch_size=prefetch_size,
                max_deliveries=max_deliveries,
                consumer_timeout=consumer_timeout,
            )
        return queue

    def _forget(self) -> None:
        for queue in self.queues.values():
            queue._declared = False
            queue._channel = None

    def _forget_exchange(self, exchange: str) -> None:
        for queue in self.queues.values():
            if queue.exchange == exchange:
                queue._declared = False

    async def declare(self, name: str, exchange: str) -> None:
        """Declare task queue ``name`` and bind it to ``exchange``.

        Durable, except in testing mode on RabbitMQ 3.x: kiwiPy's testing mode declares its
        task queues transient (``durable=False``, with ``x-expires``), which RabbitMQ 4.3
        refuses (deprecated feature ``transient_nonexcl_queues``). On RabbitMQ 3.x we
        declare them exactly as kiwiPy does, so kiwiPy peers in testing mode share them; on
        4.x (and ``memory://``) durable, with the same ``x-expires``. A transient queue of
        that name made by a kiwiPy peer on a 4.x broker that permits it is used as it is.
        """
        link = self.link
        await link.ensure_exchange(exchange)
        arguments: dict[str, Any] = {"x-message-ttl": wire.TASK_MESSAGE_TTL}
        if self.testing_mode:
            arguments["x-expires"] = wire.TESTING_TASK_QUEUE_EXPIRES
        if self.queue_type is not None:
            arguments["x-queue-type"] = self.queue_type
        durable = not self.testing_mode or not transient_queues_permitted(
            (await link.wait_connection()).server_properties
        )
        try:
            await link.declare(
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
            await link.declare(
                lambda ch: ch.queue_declare(name, passive=True), f"task queue {name!r}"
            )
        await link.declare(
            lambda ch: ch.queue_bind(name, exchange, routing_key=name),
            f"binding of task queue {name!r}",
        )


class TaskQueue:
    """A durable task queue. Get one with :meth:`Communicator.task_queue`.

    Tasks are persistent messages; a subscriber handles up to ``prefetch_count`` of them at
    once, and each is acknowledged only after its result was sent. A task delivered
    ``max_deliveries`` times without an answer (its workers died) is moved to
    ``<name>.dead-letters`` and its sender gets :class:`~kiwi_anyio.TaskDeadLettered`
    (see :mod:`kiwi_anyio.patterns.redelivery`); a subscriber may raise
    :class:`~kiwi_anyio.Retry` to have the task delivered again later.
    """

    def __init__(
        self,
        tasks: Tasks,
        name: str,
        *,
        exchange: str,
        prefetch_count: int,
        prefetch_size: int = 0,
        max_deliveries: int | None = DEFAULT_MAX_DELIVERIES,
        consumer_timeout: float | _Unset | None = UNSET,
    ) -> None:
        if isinstance(consumer_timeout, int | float) and consumer_timeout <= 0:
            raise ValueError(f"consumer_timeout must be > 0 s or None, not {consumer_timeout!r}")
        self._tasks = tasks
        self.name = name
        # its consumer, in the hooks and the logs
        self._log = LogContext(f"task queue {name!r}", name)
        self.consumer_timeout = consumer_timeout
        self.max_deliveries = max_deliveries
        self._redelivery = Redelivery(
            tasks.link,
            tasks.publisher,
            tasks.serving,
            queue=name,
            exchange=exchange,
            max_deliveries=max_deliveries,
            log=self._log,
        )
        self._dead_letters = DeadLetters(tasks.link, tasks.serving, self._redelivery)
        # tasks being handled here, by message id: a redelivered copy (its channel was
        # closed for an acknowledgement timeout) waits for the running one instead of
        # running twice; and those recently answered, whose copies are only acknowledged
        self._running: dict[str, anyio.Event] = {}
        self._answered: collections.OrderedDict[str, None] = collections.OrderedDict()
        self.exchange = exchange
        self.prefetch_count = prefetch_count
        self.prefetch_size = prefetch_size
        self._subscribers: dict[str, Subscriber] = {}
        self._declared = False
        self._channel: Channel | None = None
        self._consumer: ConsumerHandle | None = None
        self._lock_: anyio.Lock | None = None  # made on first use, in the loop

    def __repr__(self) -> str:
        return f"<TaskQueue {self.name!r} on {self.exchange!r}>"

    @property
    def _lock(self) -> anyio.Lock:
        """Made on first use, inside the communicator's loop (a queue may be made outside)."""
        if self._lock_ is None:
            self._lock_ = anyio.Lock()
        return self._lock_

    def _is_declared(self) -> bool:
        return self._declared

    def _consume_arguments(self, connection: Connection) -> dict[str, Any]:
        """``x-consumer-timeout`` where the broker honours it (RabbitMQ >= 3.12; from 4.3
        for quorum queues only: classic queues there have no timeout at all)."""
        timeout = self.consumer_timeout
        if isinstance(timeout, _Unset) or not consumer_timeout_supported(
            connection.server_properties
        ):
            return {}
        ms = MAX_CONSUMER_TIMEOUT_MS if timeout is None else max(1, round(timeout * 1000))
        return {"x-consumer-timeout": min(ms, MAX_CONSUMER_TIMEOUT_MS)}

    async def _ensure_declared(self) -> None:
        if self._declared:
            return
        async with self._lock:
            if self._is_declared():  # a concurrent caller may have declared it meanwhile
                return
            await self._tasks.declare(self.name, self.exchange)
            self._declared = True

    async def _get_channel(self) -> Channel:
        if self._channel is None or not self._channel.is_open:
            connection = await self._tasks.link.wait_connection()
            self._channel = await connection.channel(prefetch_count=self.prefetch_count)
        return self._channel

    async def _open_consumer_channel(self, connection: Connection) -> Channel:
        # declared again at every (re)start of the consumer: the queue may have been deleted
        self._declared = False
        await self._ensure_declared()
        return await connection.channel(prefetch_count=self.prefetch_count)

    @overload
    async def task_send(
        self, task: Any, no_reply: Literal[False] = False, *, timeout: Timeout = DEFAULT
    ) -> Future[Any]: ...
    @overload
    async def task_send(
        self, task: Any, no_reply: Literal[True], *, timeout: Timeout = DEFAULT
    ) -> None: ...
    @overload
    async def task_send(
        self, task: Any, no_reply: bool, *, timeout: Timeout = DEFAULT
    ) -> Future[Any] | None: ...
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
            UnroutableError: the queue is not bound (deleted by someone: the next send
                declares it again).
            DeliveryFailed: the broker did not take the message (a nacked one is sent
                again for ``nack_retry_timeout`` seconds first: a quorum queue nacks while
                it elects a new leader).

        Cancellation: cancelled before the broker's confirm, the task may or may not have
        been queued, and no future is returned. Cancelling an ``await`` of the future
        cancels the future (its result is dropped; the task itself is still done); awaiting
        it again raises ``concurrent.futures.CancelledError``.
        """
        tasks = self._tasks
        tasks.link.check_open()
        body = await tasks.serving.encode((typed.to_plain(task), no_reply))
        try:
            return await tasks.requests.send(
                body,
                exchange=self.exchange,
                routing_key=self.name,
                persistent=True,
                no_reply=no_reply,
                what=f"task to queue {self.name!r}",
                timeout=tasks.timeout(timeout),
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

        Raises:
            DuplicateSubscriberIdentifier: a subscriber of this queue has the identifier.
            DeliveryFailed: the queue could not be declared.

        Cancellation: the subscriber is not added.
        """
        tasks = self._tasks
        tasks.link.check_open()
        subscriber = typed.adapt_subscriber(subscriber, "task")
        identifier = identifier or uuid.uuid4().hex
        if identifier in self._subscribers:
            raise DuplicateSubscriberIdentifier(f"task subscriber {identifier!r} already exists")
        self._subscribers[identifier] = subscriber
        try:
            await self._ensure_declared()
            if self._consumer is None:
                self._consumer = await tasks.consumers.start(
                    self._open_consumer_channel,
                    self.name,
                    self._on_task,
                    what=self._log.what,
                    arguments=self._consume_arguments,
                )
        except BaseException:
            self._subscribers.pop(identifier, None)
            raise
        return identifier

    async def remove_task_subscriber(self, identifier: str) -> None:
        """Remove a task subscriber; the last one stops the queue's consumer (running
        handlers finish within ``SETTLE_TIMEOUT``; the rest are requeued).

        Raises:
            ValueError: no subscriber has this identifier.

        Cancellation: shielded while the consumer stops.
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
        key = message.properties.message_id
        if key and message.redelivered and await self._seen_here(key, message):
            return
        if not key:
            await self._handle_task(message, None)
            return
        self._running[key] = running = anyio.Event()
        try:
            await self._handle_task(message, lambda: self._remember_answered(key))
        finally:
            running.set()
            if self._running.get(key) is running:
                del self._running[key]

    def _remember_answered(self, key: str) -> None:
        """Task ``key``'s reply was confirmed and it was acked: a copy delivered later (its
        ack was lost with a channel) is acked without running it again."""
        seen = self._answered
        seen[key] = None
        if len(seen) > ANSWERED_KEEP:
            seen.popitem(last=False)

    async def _seen_here(self, key: str, message: Message) -> bool:
        """A redelivered task this process is running or has just answered: wait for the
        running copy, then acknowledge this one without running it again (its reply was
        sent). True if so."""
        running = self._running.get(key)
        if running is None and key not in self._answered:
            return False
        if running is not None:
            await running.wait()
            if key not in self._answered:
                return False  # the running copy ended unanswered (its link dropped): run it
        logger.warning(
            "task %s of queue %r was delivered again while this process %s it (was its "
            "channel closed for an acknowledgement timeout?): not run twice",
            key,
            self.name,
            "ran" if running is not None else "has just answered",
            extra=self._log.extra(message),
        )
        if message.channel.is_open and not message.settled:
            message.ack()
        return True

    async def _handle_task(
        self, message: Message, on_answered: Callable[[], object] | None
    ) -> None:
        """Handle one delivered task; ``on_answered()`` once its reply is confirmed and the
        task acked."""
        serving = self._tasks.serving
        redelivery = self._redelivery
        handed_off = False  # to a confirm callback, which acks
        try:
            verdict, deliveries = redelivery.verdict(message)
            if verdict is Verdict.REPUBLISH:
                await redelivery.republish(message, deliveries)
                return
            if verdict is Verdict.DEAD_LETTER:
                await redelivery.dead_letter(
                    message, deliveries, f"delivered {deliveries} times without an answer"
                )
                return
            try:
                task, no_reply = wire.decode_task(await serving.decode(message))
            except UndecodableMessage as exc:
                await serving.reject_undecodable(
                    message, exc, self.exchange, log=self._log, with_host=True
                )
                return
            for identifier, subscriber in list(self._subscribers.items()):
                try:
                    result = await serving.call_and_follow(
                        subscriber, message, task, self.exchange, not no_reply, log=self._log
                    )
                except TaskRejected:
                    continue
                except Retry as exc:
                    await redelivery.retry(message, deliveries, exc.delay, str(exc))
                    return
                except concurrent.futures.CancelledError as exc:
                    reply = wire.cancelled_reply(str(exc) or None)
                except Exception as exc:
                    serving.subscriber_failed(
                        message,
                        exc,
                        log=self._log,
                        kind="task",
                        subscriber=subscriber,
                        identifier=identifier,
                        replied=not no_reply,
                    )
                    reply = typed.attach_error_headers(
                        wire.exception_reply(exc, with_host=True), exc
                    )
                else:
                    reply = wire.result_reply(result, with_host=True)
                handed_off = await serving.settle(
                    message,
                    None if no_reply else reply,
                    self.exchange,
                    log=self._log,
                    on_answered=on_answered,
                )
                return
            # nobody took it: give it back, after a pause so it does not spin, without
            # counting this delivery (a rejection is not a failure)
            await anyio.sleep(REQUEUE_DELAY)
            await redelivery.requeue(message, deliveries - 1)
        except KiwiError as exc:  # the link dropped, or the communicator closes
            logger.warning(
                "task %s on queue %r not settled: %s",
                message.delivery_tag,
                self.name,
                exc,
                extra=self._log.extra(message),
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

        Cancellation: cancelled while waiting, no task is taken; cancelled inside the
        block, the task is settled as if the block had exited (shielded).
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
        tasks = self._tasks
        tasks.link.check_open()
        await self._ensure_declared()
        deadline = None if timeout is None else anyio.current_time() + timeout
        while True:
            channel = await self._get_channel()
            message = await channel.basic_get(self.name)
            if message is not None:
                try:
                    task, no_reply = wire.decode_task(await tasks.serving.decode(message))
                except UndecodableMessage as exc:
                    await tasks.serving.reject_undecodable(
                        message, exc, self.exchange, log=self._log, with_host=True
                    )
                    continue
                return IncomingTask(self, message, task, no_reply)
            if deadline is not None and anyio.current_time() >= deadline:
                return None
            await anyio.sleep(NEXT_TASK_POLL)

    @property
    def dead_letter_queue(self) -> str:
        """The queue its poison tasks go to: ``<name>.dead-letters``."""
        return self._redelivery.dead_letters

    async def dead_letters(self, limit: int | None = None) -> list[DeadLetter]:
        """The tasks set aside as poison, oldest first (they stay in the dead-letter queue).

        Cancellation: the messages taken for a look are given back by the broker.
        """
        self._tasks.link.check_open()
        return await self._dead_letters.list(limit)

    async def requeue_dead_letters(self) -> int:
        """Move every dead letter back to this queue, its delivery count reset; returns how
        many. Cancellation: the ones moved so far stay moved."""
        self._tasks.link.check_open()
        return await self._dead_letters.requeue()

    async def purge_dead_letters(self) -> int:
        """Delete every dead letter; returns how many."""
        self._tasks.link.check_open()
        return await self._dead_letters.purge()

    def __aiter__(self) -> TaskIterator:
        """``async for task in queue``: every task now in the queue, without waiting.

        Tasks not processed by the end of the iteration are requeued.
        """
        return TaskIterator(self)

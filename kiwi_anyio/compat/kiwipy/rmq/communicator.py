"""kiwiPy's asyncio ``RmqCommunicator`` and ``async_connect`` on kiwi_anyio's async API.

kiwiPy's shapes are kept:

* ``await comm.connect()`` / ``await comm.disconnect()`` (or ``async with``), callable from
  any task: kiwi_anyio's communicator is entered and exited by one background task of its
  own, so a pytest-asyncio fixture may tear it down in another task than the one that set it
  up (kiwi_anyio's own ``async with`` must be exited where it was entered);
* ``await comm.rpc_send(...)`` and ``await comm.task_send(...)`` give **asyncio** futures
  (``asyncio.isfuture`` is True; ``asyncio.wait``, ``gather`` and ``wait_for`` take them);
  a "pending" reply makes the future resolve to another asyncio future, as in kiwiPy;
* ``await comm.task_queue(name)`` (a coroutine) gives an :class:`RmqTaskQueue`;
* subscribers are called on the event loop, as kiwiPy calls them (plain functions too);
* a task's ``process()`` outcome that is garbage-collected unresolved requeues the task;
* ``add_close_callback(cb)``: ``cb(communicator, error)`` once disconnected.

The first argument is the connection parameters (a URL, ``{'url': ...}``...); where kiwiPy
takes an aio-pika connection (``RmqTaskQueue``, ``RmqTaskPublisher``), only its URL is used:
kiwi_anyio opens a connection of its own with its own AMQP client. A disconnected
communicator cannot be connected again (make a new one). Only the asyncio event loop is
supported here; on trio, use kiwi_anyio's own API.

Cancellation: cancelling one of these coroutines is cancelling the kiwi_anyio call it
forwards to (see :class:`kiwi_anyio.Communicator`); cancelling a returned asyncio future
cancels the kiwi_anyio future it follows (the result is dropped, the work is still done).
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any

from ....communicator import Communicator, IncomingTask, TaskQueue
from ....exceptions import CommunicatorClosed
from ....futures import Future as KiwiFuture
from . import defaults
from ._common import make_communicator, on_loop
from ._tasks import IncomingTaskView, SendOnlyQueue, follow_outcome, kiwipy_task_errors, settles

__all__ = [
    "RmqCommunicator",
    "RmqIncomingTask",
    "RmqTaskQueue",
    "async_connect",
    "to_asyncio_future",
]

logger = logging.getLogger(__name__)

Subscriber = Callable[..., Any]


def to_asyncio_future(
    future: KiwiFuture[Any], loop: asyncio.AbstractEventLoop | None = None
) -> asyncio.Future[Any]:
    """An asyncio future that follows a kiwi_anyio ``future``; nested futures (kiwiPy's
    "pending" replies) become nested asyncio futures. Cancelling it cancels ``future``."""
    loop = loop or asyncio.get_running_loop()
    target: asyncio.Future[Any] = loop.create_future()

    def apply(source: KiwiFuture[Any]) -> None:
        if target.done():
            return
        if source.cancelled():
            target.cancel()
            return
        exc = source.exception()
        if exc is not None:
            target.set_exception(exc)
            return
        result = source.result()
        target.set_result(
            to_asyncio_future(result, loop) if isinstance(result, KiwiFuture) else result
        )

    def copy(source: KiwiFuture[Any]) -> None:
        try:
            loop.call_soon_threadsafe(apply, source)
        except RuntimeError:  # the loop is closed: nobody waits any more
            pass

    future.add_done_callback(copy)

    def cancel_source(done: asyncio.Future[Any]) -> None:
        if done.cancelled() and not future.done():
            future.cancel()

    target.add_done_callback(cancel_source)
    return target


class RmqIncomingTask(IncomingTaskView):
    """kiwiPy's ``RmqIncomingTask``: a task taken with ``next_task()`` or ``async for``."""

    def __init__(self, task: IncomingTask) -> None:
        super().__init__(task)
        self._task = task

    def process(self) -> asyncio.Future[Any]:
        """Start processing; resolve the returned asyncio future with the result. If it is
        garbage-collected unresolved, the task is requeued."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        return follow_outcome(self._task.process(), future)

    async def requeue(self) -> None:
        """Give the task back to the queue."""
        await self._task.requeue()

    @asynccontextmanager
    async def processing(self) -> AsyncIterator[asyncio.Future[Any]]:
        """``async with task.processing() as outcome:``; an exception becomes the outcome."""
        with settles(self.process()) as outcome:
            yield outcome


class RmqTaskQueue:
    """kiwiPy's ``RmqTaskQueue``: from ``await comm.task_queue(name)``.

    Made directly, ``RmqTaskQueue(connection, exchange_name=..., queue_name=...,
    testing_mode=...)``, it owns a communicator of its own: ``await queue.connect()`` ...
    ``await queue.disconnect()``. ``connection`` is kiwiPy's aio-pika connection (only its
    URL is used) or connection parameters (a URL, ``{'url': ...}``...).
    """

    def __init__(
        self,
        connection: Any,
        exchange_name: str = defaults.MESSAGE_EXCHANGE,
        queue_name: str = defaults.TASK_QUEUE,
        decoder: Callable[[bytes], Any] | None = None,
        encoder: Callable[[Any], bytes] | None = None,
        exchange_params: Any = None,
        prefetch_size: int = defaults.TASK_PREFETCH_SIZE,
        prefetch_count: int = defaults.TASK_PREFETCH_COUNT,
        testing_mode: bool = False,
        *,
        _communicator: RmqCommunicator | None = None,
        _queue: TaskQueue | None = None,
    ) -> None:
        del exchange_params  # aio-pika's; kiwi_anyio declares kiwiPy's topic exchange
        self._own: RmqCommunicator | None = None
        if _communicator is None:
            _communicator = self._own = RmqCommunicator(
                connection,
                task_exchange=exchange_name,
                task_queue=queue_name,
                task_prefetch_size=prefetch_size,
                task_prefetch_count=prefetch_count,
                encoder=encoder,
                decoder=decoder,
                testing_mode=testing_mode,
            )
        self._communicator = _communicator
        self._queue = _queue
        self._name = queue_name
        self._prefetch = (prefetch_count, prefetch_size)

    async def connect(self) -> None:
        """Connect the communicator this queue owns (if it was made directly)."""
        if self._own is not None:
            await self._own.connect()

    async def disconnect(self) -> None:
        """Disconnect the communicator this queue owns (if it was made directly)."""
        if self._own is not None:
            await self._own.disconnect()

    @property
    def _q(self) -> TaskQueue:
        if self._queue is None:
            self._queue = self._make_queue(self._communicator._comm)
        return self._queue

    def _make_queue(self, comm: Communicator) -> TaskQueue:
        return comm.task_queue(self._name, self._prefetch[0], self._prefetch[1])

    @property
    def name(self) -> str:
        """The queue's name."""
        return self._name

    async def task_send(self, task: Any, no_reply: bool = False) -> asyncio.Future[Any] | None:
        """Send a task; returns (after the broker's confirm) an asyncio future of its
        result, or None with ``no_reply``."""
        with kiwipy_task_errors():
            future = await self._q.task_send(task, no_reply)
        return None if future is None else to_asyncio_future(future)

    async def add_task_subscriber(
        self, subscriber: Subscriber, identifier: str | None = None
    ) -> str:
        """Add ``subscriber(comm, task)``; returns its identifier."""
        return await self._q.add_task_subscriber(on_loop(subscriber), identifier)

    async def remove_task_subscriber(self, identifier: str) -> None:
        """Remove a task subscriber (``ValueError`` if unknown)."""
        await self._q.remove_task_subscriber(identifier)

    @asynccontextmanager
    async def next_task(
        self, no_ack: bool = False, fail: bool = True, timeout: float | None = 5.0
    ) -> AsyncIterator[RmqIncomingTask | None]:
        """``async with queue.next_task() as task:`` (``QueueEmpty`` if none came within
        ``timeout``; ``no_ack`` is accepted and ignored: tasks are acknowledged after their
        outcome)."""
        del no_ack
        async with self._q.next_task(timeout, fail=fail) as task:
            yield None if task is None else RmqIncomingTask(task)

    async def __aiter__(self) -> AsyncIterator[RmqIncomingTask]:
        """Every task now in the queue; the ones not processed are requeued at the end."""
        async for task in self._q:
            yield RmqIncomingTask(task)


class RmqTaskPublisher(RmqTaskQueue):
    """kiwiPy's ``RmqTaskPublisher``: ``connect()``, ``task_send()``, ``disconnect()``.

    As kiwiPy's, it declares the task exchange but not the queue: with no queue bound (no
    :class:`RmqTaskQueue` of that name made yet), ``task_send`` raises
    :class:`~kiwi_anyio.compat.kiwipy.exceptions.TaskUnroutable`, which is also aio-pika's
    ``DeliveryError`` when aio-pika is importable (kiwiPy raises aio-pika's). The other
    methods of :class:`RmqTaskQueue` are not kiwiPy's publisher's; do not use them here.
    """

    def __init__(
        self,
        connection: Any,
        queue_name: str = defaults.TASK_QUEUE,
        exchange_name: str = defaults.MESSAGE_EXCHANGE,
        exchange_params: Any = None,
        encoder: Callable[[Any], bytes] | None = None,
        decoder: Callable[[bytes], Any] | None = None,
        confirm_deliveries: bool = True,
        testing_mode: bool = False,
    ) -> None:
        del confirm_deliveries  # always: kiwi_anyio returns after the broker's confirm
        super().__init__(
            connection,
            exchange_name=exchange_name,
            queue_name=queue_name,
            decoder=decoder,
            encoder=encoder,
            exchange_params=exchange_params,
            testing_mode=testing_mode,
        )

    def _make_queue(self, comm: Communicator) -> TaskQueue:
        return SendOnlyQueue(comm._tasks, self._name, exchange=comm.task_exchange, prefetch_count=0)


class RmqCommunicator:
    """kiwiPy's asyncio ``RmqCommunicator`` (see the module docstring).

    Args:
        connection_params: a URL, ``{'url': ...}``, a dict of host/port/login/password/
            virtualhost, or None (``amqp://guest:guest@127.0.0.1/``).
        **options: any other :class:`kiwi_anyio.Communicator` option.
    """

    def __init__(
        self,
        connection_params: Any = None,
        message_exchange: str = defaults.MESSAGE_EXCHANGE,
        queue_expires: int = defaults.QUEUE_EXPIRES,
        task_exchange: str = defaults.TASK_EXCHANGE,
        task_queue: str = defaults.TASK_QUEUE,
        task_prefetch_size: int = defaults.TASK_PREFETCH_SIZE,
        task_prefetch_count: int = defaults.TASK_PREFETCH_COUNT,
        encoder: Callable[[Any], bytes] | None = None,
        decoder: Callable[[bytes], Any] | None = None,
        testing_mode: bool = False,
        **options: Any,
    ) -> None:
        self._comm: Communicator = make_communicator(
            connection_params,
            message_exchange=message_exchange,
            queue_expires=queue_expires,
            task_exchange=task_exchange,
            task_queue=task_queue,
            task_prefetch_size=task_prefetch_size,
            task_prefetch_count=task_prefetch_count,
            encoder=encoder,
            decoder=decoder,
            testing_mode=testing_mode,
            options=options,
        )
        self._comm._callback_comm = self
        #: how long calls a removed RPC subscriber is handling may still take to reply
        self.remove_drain_timeout = 60.0
        self._runner: asyncio.Task[None] | None = None
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        return f"<RmqCommunicator {self._comm.url}>"

    @property
    def communicator(self) -> Communicator:
        """The kiwi_anyio communicator underneath."""
        return self._comm

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The event loop it was connected on."""
        return self._loop

    # ------------------------------------------------------------ lifetime

    async def connect(self) -> None:
        """Connect (idempotent while connected); raises the connection's error.

        Cancellation: cancelled while connecting, the connection attempt is cancelled too,
        and this communicator cannot be connected again.
        """
        if self._runner is not None:
            if self._runner.done():
                raise CommunicatorClosed("this communicator was disconnected: make a new one")
            return
        loop = self._loop = asyncio.get_running_loop()
        started: asyncio.Future[None] = loop.create_future()
        stop = self._stop = asyncio.Event()

        async def own() -> None:
            # one task enters and exits the communicator, whichever task calls disconnect()
            try:
                async with self._comm:
                    started.set_result(None)
                    await stop.wait()
            except BaseException as exc:
                if not started.done():
                    if isinstance(exc, asyncio.CancelledError):
                        started.cancel()  # a future takes no CancelledError as its exception
                    else:
                        started.set_exception(exc)
                    return
                if started.cancelled():
                    return  # connect() was cancelled, and this attempt with it
                logger.warning("%r ended: %r", self, exc)

        self._runner = loop.create_task(own())
        try:
            await started
        except BaseException:
            self._runner.cancel()  # cancelled while connecting: so is the connection attempt
            raise

    async def disconnect(self) -> None:
        """Disconnect (idempotent): pending futures fail with ``CommunicatorClosed``."""
        runner = self._runner
        if runner is None or self._stop is None:
            return
        self._stop.set()
        await asyncio.shield(runner)

    def connected(self) -> bool:
        """True while connected."""
        return self._runner is not None and not self._runner.done() and not self._comm.is_closed()

    def is_closed(self) -> bool:
        """True once disconnected."""
        return self._comm.is_closed()

    async def __aenter__(self) -> RmqCommunicator:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.disconnect()

    def add_close_callback(
        self, callback: Callable[[Any, BaseException | None], object], weak: bool = False
    ) -> None:
        """``callback(communicator, error)`` once disconnected (``weak``: hold a weak
        reference to it)."""
        ref: Callable[[], Callable[[Any, BaseException | None], object] | None]
        if weak:
            ref = (
                weakref.WeakMethod(callback)
                if hasattr(callback, "__self__")
                else weakref.ref(callback)
            )
        else:

            def ref() -> Callable[[Any, BaseException | None], object]:
                return callback

        def listener(event: str, error: BaseException | None) -> None:
            if event == "closed":
                self._comm.remove_connection_listener(listener)
                target = ref()
                if target is not None:
                    target(self, error)

        self._comm.add_connection_listener(listener)

    @property
    def server_properties(self) -> dict[str, Any]:
        """The broker's properties (``product``, ``version``, ``platform``...)."""
        return self._comm.server_properties

    # ------------------------------------------------------------ kiwiPy's coroutines

    async def add_rpc_subscriber(self, subscriber: Subscriber, identifier: Any = None) -> str:
        """Add ``subscriber(comm, msg)``; returns its identifier."""
        return await self._comm.add_rpc_subscriber(on_loop(subscriber), identifier)

    async def remove_rpc_subscriber(self, identifier: Any) -> None:
        """Remove an RPC subscriber (``ValueError`` if unknown); calls it is handling go
        on and reply, as in kiwiPy (for up to ``remove_drain_timeout`` seconds)."""
        await self._comm._rpc.remove(
            identifier, drain_timeout=self.remove_drain_timeout, background=True
        )

    async def add_task_subscriber(
        self, subscriber: Subscriber, identifier: str | None = None
    ) -> str:
        """Subscribe ``subscriber(comm, task)`` to the default task queue."""
        return await self._comm.add_task_subscriber(on_loop(subscriber), identifier)

    async def remove_task_subscriber(self, identifier: str) -> None:
        """Remove a task subscriber (``ValueError`` if unknown)."""
        await self._comm.remove_task_subscriber(identifier)

    async def add_broadcast_subscriber(
        self, subscriber: Subscriber, identifier: str | None = None
    ) -> str:
        """Add ``subscriber(comm, body, sender, subject, correlation_id)``."""
        return await self._comm.add_broadcast_subscriber(on_loop(subscriber), identifier)

    async def remove_broadcast_subscriber(self, identifier: str) -> None:
        """Remove a broadcast subscriber (``ValueError`` if unknown)."""
        await self._comm.remove_broadcast_subscriber(identifier)

    async def rpc_send(self, recipient_id: Any, msg: Any) -> asyncio.Future[Any]:
        """Call an RPC subscriber; returns an asyncio future of the reply
        (``UnroutableError`` at once if there is none)."""
        return to_asyncio_future(await self._comm.rpc_send(recipient_id, msg))

    async def task_send(self, task: Any, no_reply: bool = False) -> asyncio.Future[Any] | None:
        """Send a task to the default queue; an asyncio future of its result (None with
        ``no_reply``)."""
        with kiwipy_task_errors():
            future = await self._comm.task_send(task, no_reply)
        return None if future is None else to_asyncio_future(future)

    async def broadcast_send(
        self, body: Any, sender: Any = None, subject: Any = None, correlation_id: Any = None
    ) -> bool:
        """Send a broadcast; True once the broker confirmed it."""
        return await self._comm.broadcast_send(body, sender, subject, correlation_id)

    async def task_queue(
        self, queue_name: str, prefetch_size: int = 0, prefetch_count: int = 0
    ) -> RmqTaskQueue:
        """A task queue on the task exchange (a coroutine, as in kiwiPy)."""
        queue = self._comm.task_queue(queue_name, prefetch_count, prefetch_size)
        return RmqTaskQueue(None, queue_name=queue_name, _communicator=self, _queue=queue)


async def async_connect(
    connection_params: Any = None, connection_factory: Any = None, *args: Any, **kwargs: Any
) -> RmqCommunicator:
    """kiwiPy's ``kiwipy.rmq.async_connect(...)``: a connected :class:`RmqCommunicator`.

    The arguments are :class:`RmqCommunicator`'s, in its order, with kiwiPy's
    ``connection_factory`` second (accepted and ignored).

    Cancellation: cancelled while connecting, the communicator is closed again.
    """
    del connection_factory
    communicator = RmqCommunicator(connection_params, *args, **kwargs)
    await communicator.connect()
    return communicator

"""kiwiPy's ``RmqThreadCommunicator`` on kiwi_anyio's blocking API.

``RmqThreadCommunicator.connect(connection_params={'url': ...}, message_exchange=...,
task_exchange=..., task_queue=..., encoder=..., decoder=..., testing_mode=...)`` connects at
once and gives kiwiPy's thread API, with kiwiPy's choices where its clients depend on them:

* subscribers are called on the communicator's event loop thread, one at a time, as kiwiPy
  calls them (``threaded_subscribers=True``: kiwi_anyio's worker threads instead);
* ``task_prefetch_count=0`` (no limit) by default;
* ``close()`` first lets an RPC this communicator sent to one of its own subscribers reach
  it (up to ``close_timeout`` seconds): kiwiPy dispatches a call delivered before the close;
* a ``process()`` outcome of a task taken with ``next_task()`` that is garbage-collected
  unresolved requeues the task, as in kiwiPy;
* ``add_close_callback(cb)``: ``cb(communicator, error)`` once closed.

What stays kiwi_anyio's: safe decoding (see :mod:`.defaults`), no 5 s cap on every call
(``async_task_timeout`` is accepted and ignored), ``next_task(timeout=)`` waits up to its
timeout for a task (kiwiPy's takes one only if the queue has one), and the rest listed in
``docs/differences-from-kiwipy.md``.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import functools
import inspect
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from ...._pending import DEFAULT, Timeout
from ....blocking import BlockingCommunicator, BlockingIncomingTask, BlockingTaskQueue
from ....communicator import TaskQueue
from ..communications import Communicator as KiwipyCommunicator
from . import defaults
from ._common import make_communicator, on_loop
from ._tasks import IncomingTaskView, follow_outcome, kiwipy_task_errors, settles

__all__ = [
    "RmqThreadCommunicator",
    "RmqThreadIncomingTask",
    "RmqThreadTaskQueue",
    "connect",
]

Subscriber = Callable[..., Any]


class RmqThreadIncomingTask(IncomingTaskView):
    """kiwiPy's ``RmqThreadIncomingTask``: a task taken with ``next_task()`` or iteration."""

    def __init__(self, task: BlockingIncomingTask) -> None:
        super().__init__(task)
        self._task = task

    def process(self) -> concurrent.futures.Future[Any]:
        """Start processing: resolve the returned thread future with the result. If it is
        garbage-collected unresolved, the task is requeued."""
        return follow_outcome(self._task.process(), concurrent.futures.Future())

    def requeue(self) -> None:
        """Give the task back to the queue."""
        self._task.requeue()

    @contextmanager
    def processing(self) -> Iterator[concurrent.futures.Future[Any]]:
        """``with task.processing() as outcome:``; an exception becomes the outcome."""
        with settles(self.process()) as outcome:
            yield outcome


class RmqThreadTaskQueue(BlockingTaskQueue):
    """kiwiPy's ``RmqThreadTaskQueue``: :class:`~kiwi_anyio.blocking.BlockingTaskQueue` with
    kiwiPy's subscriber calls, incoming tasks and unroutable error."""

    def __init__(self, communicator: RmqThreadCommunicator, queue: TaskQueue) -> None:
        super().__init__(communicator, queue)
        self._communicator = communicator

    def __iter__(self) -> Iterator[RmqThreadIncomingTask]:  # type: ignore[override]
        """Every task now in the queue; the ones not processed are requeued at the end."""
        for task in super().__iter__():
            yield RmqThreadIncomingTask(task)

    def task_send(
        self, task: Any, no_reply: bool = False, *, timeout: Timeout = DEFAULT
    ) -> concurrent.futures.Future[Any] | None:
        """Send a task; returns its result future (None with ``no_reply``).

        Raises:
            TaskUnroutable: no queue took it (also aio-pika's ``DeliveryError`` when
                aio-pika is importable, as kiwiPy raises).

        Cancellation: none in a thread; see :meth:`kiwi_anyio.TaskQueue.task_send` for
        what the returned future's ``cancel()`` does.
        """
        with kiwipy_task_errors():
            return super().task_send(task, no_reply, timeout=timeout)

    def add_task_subscriber(self, subscriber: Subscriber, identifier: str | None = None) -> str:
        """Add ``subscriber(comm, task)``; returns its identifier."""
        return super().add_task_subscriber(self._communicator._subscriber(subscriber), identifier)

    @contextmanager
    def next_task(  # type: ignore[override]
        self, timeout: float | None = 5.0, fail: bool = True
    ) -> Iterator[RmqThreadIncomingTask | None]:
        """``with queue.next_task() as task:``; ``QueueEmpty`` if none came within
        ``timeout`` seconds (``None`` instead with ``fail=False``)."""
        with super().next_task(timeout, fail) as task:
            yield None if task is None else RmqThreadIncomingTask(task)


class RmqThreadCommunicator(BlockingCommunicator, KiwipyCommunicator):
    """kiwiPy's ``RmqThreadCommunicator``; connected when constructed (see the module
    docstring for what follows kiwiPy and what does not).

    Args:
        connection_params: a URL, ``{'url': ...}``, a dict of host/port/login/password/
            virtualhost, or None (``amqp://guest:guest@127.0.0.1/``).
        connection_factory: accepted for kiwiPy's signature, ignored (kiwi_anyio has its
            own AMQP client, with recovery built in).
        async_task_timeout: accepted, ignored: calls have no hidden time limit.
        threaded_subscribers: call plain-function subscribers in worker threads
            (kiwi_anyio's way) instead of on the event loop thread (kiwiPy's).
        close_timeout: how long ``close()`` waits for RPCs sent to this communicator's
            own subscribers to reach them.
        remove_drain_timeout: how long the calls a removed RPC subscriber is handling may
            still take to reply.
        **options: any other :class:`kiwi_anyio.Communicator` option (``request_timeout``,
            ``drain_timeout``, ``codec``...).
    """

    def __init__(
        self,
        connection_params: Any = None,
        connection_factory: Any = None,
        message_exchange: str = defaults.MESSAGE_EXCHANGE,
        queue_expires: int = defaults.QUEUE_EXPIRES,
        task_exchange: str = defaults.TASK_EXCHANGE,
        task_queue: str = defaults.TASK_QUEUE,
        task_prefetch_size: int = defaults.TASK_PREFETCH_SIZE,
        task_prefetch_count: int = defaults.TASK_PREFETCH_COUNT,
        encoder: Callable[[Any], bytes] | None = None,
        decoder: Callable[[bytes], Any] | None = None,
        testing_mode: bool = False,
        async_task_timeout: float | None = 5.0,
        *,
        threaded_subscribers: bool = False,
        close_timeout: float = 5.0,
        remove_drain_timeout: float = 60.0,
        **options: Any,
    ) -> None:
        del connection_factory, async_task_timeout  # see the docstring
        comm = make_communicator(
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
        super().__init__(comm, "asyncio")
        self._threaded = threaded_subscribers
        self.close_timeout = close_timeout
        self.remove_drain_timeout = remove_drain_timeout
        # RPCs sent to our own subscribers and not yet received by them, by identifier
        self._undelivered: collections.Counter[str] = collections.Counter()
        self._undelivered_lock = threading.Lock()
        self._open()
        #: the event loop the communicator runs on, in its own thread (kiwiPy's ``_loop``)
        self._loop: asyncio.AbstractEventLoop = self._live_portal().call(asyncio.get_running_loop)

    @classmethod
    def connect(
        cls,
        connection_params: Any = None,
        connection_factory: Any = None,
        message_exchange: str = defaults.MESSAGE_EXCHANGE,
        task_exchange: str = defaults.TASK_EXCHANGE,
        task_queue: str = defaults.TASK_QUEUE,
        task_prefetch_size: int = defaults.TASK_PREFETCH_SIZE,
        task_prefetch_count: int = defaults.TASK_PREFETCH_COUNT,
        encoder: Callable[[Any], bytes] | None = None,
        decoder: Callable[[bytes], Any] | None = None,
        testing_mode: bool = False,
        async_task_timeout: float | None = 5.0,
        **options: Any,
    ) -> RmqThreadCommunicator:
        """kiwiPy's ``RmqThreadCommunicator.connect(...)``: a connected communicator."""
        return cls(
            connection_params,
            connection_factory,
            message_exchange=message_exchange,
            task_exchange=task_exchange,
            task_queue=task_queue,
            task_prefetch_size=task_prefetch_size,
            task_prefetch_count=task_prefetch_count,
            encoder=encoder,
            decoder=decoder,
            testing_mode=testing_mode,
            async_task_timeout=async_task_timeout,
            **options,
        )

    def __enter__(self) -> RmqThreadCommunicator:
        return self

    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop the communicator runs on (in its own thread)."""
        return self._loop

    def _subscriber(self, subscriber: Subscriber) -> Subscriber:
        return subscriber if self._threaded else on_loop(subscriber)

    # ------------------------------------------------------------ kiwiPy's API

    def add_rpc_subscriber(self, subscriber: Subscriber, identifier: Any = None) -> str:
        """Add ``subscriber(comm, msg)`` for RPCs to ``identifier``; returns the identifier."""
        wrapped = self._subscriber(subscriber)
        counter = self._undelivered
        lock = self._undelivered_lock
        key: list[str] = []

        def mark() -> None:
            if key:
                with lock:
                    if counter[key[0]] > 0:
                        counter[key[0]] -= 1

        received: Subscriber
        if inspect.iscoroutinefunction(wrapped):

            async def received_async(*args: Any) -> Any:
                mark()
                return await wrapped(*args)

            received = received_async
        else:

            def received_sync(*args: Any) -> Any:
                mark()
                return wrapped(*args)

            received = received_sync

        ident = super().add_rpc_subscriber(received, identifier)
        key.append(ident)
        return ident

    def remove_rpc_subscriber(self, identifier: Any) -> None:
        """Remove an RPC subscriber (``ValueError`` if unknown).

        As in kiwiPy, calls it is handling go on and reply (for up to
        ``remove_drain_timeout`` seconds), and this returns without waiting for them: a
        plumpy process removes its own subscriber from inside the "kill" call it answers.
        New calls are unroutable at once.
        """
        self._call(
            functools.partial(
                self._comm._rpc.remove,
                identifier,
                drain_timeout=self.remove_drain_timeout,
                background=True,
            )
        )
        with self._undelivered_lock:
            self._undelivered.pop(str(identifier), None)

    def rpc_send(
        self, recipient_id: Any, msg: Any, **kwargs: Any
    ) -> concurrent.futures.Future[Any]:
        """Call the RPC subscriber ``recipient_id``; returns the future of its reply."""
        ident = str(recipient_id)
        local = ident in self._comm._rpc.subscribers
        if local:
            with self._undelivered_lock:
                self._undelivered[ident] += 1
        try:
            return super().rpc_send(recipient_id, msg, **kwargs)
        except BaseException:
            if local:
                with self._undelivered_lock:
                    self._undelivered[ident] -= 1
            raise

    def add_task_subscriber(self, subscriber: Subscriber, identifier: str | None = None) -> str:
        """Subscribe ``subscriber(comm, task)`` to the default task queue."""
        return super().add_task_subscriber(self._subscriber(subscriber), identifier)

    def add_broadcast_subscriber(
        self, subscriber: Subscriber, identifier: str | None = None
    ) -> str:
        """Add ``subscriber(comm, body, sender, subject, correlation_id)``."""
        return super().add_broadcast_subscriber(self._subscriber(subscriber), identifier)

    def task_queue(  # type: ignore[override]
        self, name: str, prefetch_size: int = 0, prefetch_count: int = 0
    ) -> RmqThreadTaskQueue:
        """A task queue on the task exchange (kiwiPy's argument order and defaults)."""
        return RmqThreadTaskQueue(
            self, super().task_queue(name, prefetch_count, prefetch_size)._queue
        )

    def task_send(
        self, task: Any, no_reply: bool = False, *, timeout: Timeout = DEFAULT
    ) -> concurrent.futures.Future[Any] | None:
        """:meth:`RmqThreadTaskQueue.task_send` to the default task queue."""
        with kiwipy_task_errors():
            return super().task_send(task, no_reply, timeout=timeout)

    def close(self) -> None:
        """Close (idempotent); first RPCs sent to our own subscribers reach them."""
        if not self._closed:
            deadline = time.monotonic() + self.close_timeout
            while time.monotonic() < deadline:
                with self._undelivered_lock:
                    if not any(n > 0 for n in self._undelivered.values()):
                        break
                time.sleep(0.01)
        super().close()


def connect(
    connection_params: Any = None,
    connection_factory: Any = None,
    message_exchange: str = defaults.MESSAGE_EXCHANGE,
    task_exchange: str = defaults.TASK_EXCHANGE,
    task_queue: str = defaults.TASK_QUEUE,
    task_prefetch_size: int = defaults.TASK_PREFETCH_SIZE,
    task_prefetch_count: int = defaults.TASK_PREFETCH_COUNT,
    encoder: Callable[[Any], bytes] | None = None,
    decoder: Callable[[bytes], Any] | None = None,
    testing_mode: bool = False,
    **options: Any,
) -> RmqThreadCommunicator:
    """kiwiPy's ``kiwipy.rmq.connect(...)``: a connected :class:`RmqThreadCommunicator`."""
    return RmqThreadCommunicator.connect(
        connection_params,
        connection_factory,
        message_exchange=message_exchange,
        task_exchange=task_exchange,
        task_queue=task_queue,
        task_prefetch_size=task_prefetch_size,
        task_prefetch_count=task_prefetch_count,
        encoder=encoder,
        decoder=decoder,
        testing_mode=testing_mode,
        **options,
    )

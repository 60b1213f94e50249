"""The blocking API: ``with kiwi_anyio.connect(url) as comm:`` in ordinary synchronous code.

It mirrors kiwiPy's ``RmqThreadCommunicator``: ``task_send`` and ``rpc_send`` return
:class:`concurrent.futures.Future` (``.result(timeout)``), subscribers are plain functions.
The event loop runs in a background thread (anyio's blocking portal); plain-function
subscribers run in worker threads, so a callback may block, or call the communicator
itself, without a deadlock. There is no hidden timeout: timeouts are the caller's choice
(``future.result(timeout=...)``).

``task_send`` returns only once the broker confirmed the task, so a task sent just before
the ``with`` block exits is never lost.
"""

from __future__ import annotations

import concurrent.futures
import functools
import inspect
import weakref
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING, Any

from anyio.from_thread import BlockingPortal, start_blocking_portal

from ._pending import DEFAULT, Timeout
from .exceptions import CommunicatorClosed
from .futures import Future

if TYPE_CHECKING:
    from .communicator import Communicator, IncomingTask, TaskQueue

__all__ = ["BlockingCommunicator", "BlockingIncomingTask", "BlockingTaskQueue"]

Subscriber = Callable[..., Any]


def to_thread_future(future: Future[Any]) -> concurrent.futures.Future[Any]:
    """A ``concurrent.futures.Future`` that follows ``future``; nested futures (kiwiPy's
    "pending" replies) become nested thread futures."""
    target: concurrent.futures.Future[Any] = concurrent.futures.Future()

    def copy(source: Future[Any]) -> None:
        if source.cancelled():
            target.cancel()
            target.set_running_or_notify_cancel()
            return
        exc = source.exception()
        if exc is not None:
            target.set_exception(exc)
            return
        result = source.result()
        target.set_result(to_thread_future(result) if isinstance(result, Future) else result)

    future.add_done_callback(copy)

    def cancel_source(t: concurrent.futures.Future[Any]) -> None:
        if t.cancelled() and not future.done():
            future.cancel()

    target.add_done_callback(cancel_source)
    return target


class BlockingIncomingTask:
    """A task taken with :meth:`BlockingTaskQueue.next_task` (kiwiPy's
    ``RmqThreadIncomingTask``)."""

    def __init__(self, portal: BlockingPortal, task: IncomingTask) -> None:
        self._portal = portal
        self._task = task

    @property
    def body(self) -> Any:
        """The task."""
        return self._task.body

    @property
    def no_reply(self) -> bool:
        """True if the sender does not wait for a result."""
        return self._task.no_reply

    @property
    def state(self) -> str:
        """``pending``, ``processing``, ``finished`` or ``requeued``."""
        return self._task.state

    def process(self) -> Future[Any]:
        """Start processing; resolve the returned future with the result."""
        return self._task.process()

    def requeue(self) -> None:
        """Give the task back to the queue."""
        self._portal.call(self._task.requeue)

    @contextmanager
    def processing(self) -> Iterator[Future[Any]]:
        """``with task.processing() as outcome:``; an exception becomes the outcome."""
        outcome = self.process()
        try:
            yield outcome
        except Exception as exc:
            if not outcome.done():
                outcome.set_exception(exc)
            raise


class BlockingTaskQueue:
    """A task queue for synchronous code (kiwiPy's ``RmqThreadTaskQueue``)."""

    def __init__(self, blocking: BlockingCommunicator, queue: TaskQueue) -> None:
        self._blocking = blocking
        self._queue = queue

    @property
    def name(self) -> str:
        """The queue's name."""
        return self._queue.name

    def task_send(
        self, task: Any, no_reply: bool = False, *, timeout: Timeout = DEFAULT
    ) -> concurrent.futures.Future[Any] | None:
        """Send a task; returns once the broker confirmed it (see ``TaskQueue.task_send``)."""
        future = self._blocking._call(
            functools.partial(self._queue.task_send, timeout=timeout), task, no_reply
        )
        return None if future is None else to_thread_future(future)

    def add_task_subscriber(self, subscriber: Subscriber, identifier: str | None = None) -> str:
        """Add ``subscriber(comm, task)``; returns its identifier."""
        return str(self._blocking._call(self._queue.add_task_subscriber, subscriber, identifier))

    def remove_task_subscriber(self, identifier: str) -> None:
        """Remove a task subscriber (``ValueError`` if unknown)."""
        self._blocking._call(self._queue.remove_task_subscriber, identifier)

    @contextmanager
    def next_task(
        self, timeout: float | None = 5.0, fail: bool = True
    ) -> Iterator[BlockingIncomingTask | None]:
        """``with queue.next_task(timeout=1.0) as task:`` (see ``TaskQueue.next_task``)."""
        portal = self._blocking._live_portal()
        with portal.wrap_async_context_manager(self._queue.next_task(timeout, fail=fail)) as task:
            yield None if task is None else BlockingIncomingTask(portal, task)

    def __iter__(self) -> Iterator[BlockingIncomingTask]:
        """Every task now in the queue; unprocessed ones are requeued at the end."""
        portal = self._blocking._live_portal()
        iterator = self._queue.__aiter__()
        while True:
            try:
                task = portal.call(iterator.__anext__)
            except StopAsyncIteration:
                return
            yield BlockingIncomingTask(portal, task)


class BlockingCommunicator:
    """kiwiPy's ``RmqThreadCommunicator`` API. ``with kiwi_anyio.connect(url) as comm:``."""

    def __init__(self, comm: Communicator, backend: str = "asyncio") -> None:
        self._comm = comm
        self._stack = ExitStack()
        self._portal: BlockingPortal | None = None
        self._backend = backend
        self._closed = False

    def _open(self) -> None:
        try:
            self._portal = self._stack.enter_context(start_blocking_portal(self._backend))
            self._comm._callback_comm = self
            self._stack.enter_context(self._portal.wrap_async_context_manager(self._comm))
        except BaseException:
            self._stack.close()
            self._closed = True
            raise

    def _live_portal(self) -> BlockingPortal:
        if self._closed or self._portal is None:
            raise CommunicatorClosed("the communicator is closed")
        return self._portal

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self._live_portal().call(fn, *args)

    # ------------------------------------------------------------ lifetime

    def close(self) -> None:
        """Close the communicator (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._stack.close()

    def is_closed(self) -> bool:
        """True once closed."""
        return self._closed or self._comm.is_closed()

    def __enter__(self) -> BlockingCommunicator:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def add_close_callback(
        self, callback: Callable[[Any, BaseException | None], object], weak: bool = False
    ) -> None:
        """kiwiPy's close callback: ``callback(communicator, error)`` once the communicator
        has closed (``error``: the connection failure that ended it, or None).

        ``weak``: hold only a weak reference to ``callback`` (a bound method is held by a
        ``weakref.WeakMethod``), as kiwiPy's ``add_close_callback(cb, weak=True)``.
        """
        ref: Callable[[], Callable[[Any, BaseException | None], object] | None]
        if weak:
            ref = (
                weakref.WeakMethod(callback)
                if inspect.ismethod(callback)
                else weakref.ref(callback)
            )
        else:

            def ref() -> Callable[[Any, BaseException | None], object]:
                return callback

        def listener(event: str, error: BaseException | None) -> None:
            if event != "closed":
                return
            self._comm.remove_connection_listener(listener)
            target = ref()
            if target is not None:
                target(self, error)

        self._comm.add_connection_listener(listener)

    @property
    def server_properties(self) -> dict[str, Any]:
        """The broker's properties."""
        self._live_portal()
        return self._comm.server_properties

    @property
    def communicator(self) -> Communicator:
        """The async communicator underneath (for use inside ``async def`` subscribers)."""
        return self._comm

    # ------------------------------------------------------------ API

    def task_queue(
        self, name: str, prefetch_count: int | None = None, prefetch_size: int = 0
    ) -> BlockingTaskQueue:
        """A task queue (see ``Communicator.task_queue``)."""
        # made in the loop's thread: the queue's primitives must not bind to a loop the
        # calling thread may be running (a Jupyter cell)
        queue = self._call(self._comm.task_queue, name, prefetch_count, prefetch_size)
        return BlockingTaskQueue(self, queue)

    def task_send(
        self, task: Any, no_reply: bool = False, *, timeout: Timeout = DEFAULT
    ) -> concurrent.futures.Future[Any] | None:
        """Send a task to the default queue; returns once the broker confirmed it.

        ``timeout``: as :meth:`Communicator.task_send`."""
        future = self._call(
            functools.partial(self._comm.task_send, timeout=timeout), task, no_reply
        )
        return None if future is None else to_thread_future(future)

    def rpc_send(
        self, recipient_id: Any, msg: Any, *, timeout: Timeout = DEFAULT
    ) -> concurrent.futures.Future[Any]:
        """Call an RPC subscriber (``UnroutableError`` if there is none).

        ``timeout``: as :meth:`Communicator.rpc_send`."""
        return to_thread_future(
            self._call(functools.partial(self._comm.rpc_send, timeout=timeout), recipient_id, msg)
        )

    def broadcast_send(
        self,
        body: Any,
        sender: Any = None,
        subject: Any = None,
        correlation_id: Any = None,
    ) -> bool:
        """Send a broadcast; returns True once the broker confirmed it."""
        return bool(self._call(self._comm.broadcast_send, body, sender, subject, correlation_id))

    def add_task_subscriber(self, subscriber: Subscriber, identifier: str | None = None) -> str:
        """Subscribe ``subscriber(comm, task)`` to the default task queue."""
        return str(self._call(self._comm.add_task_subscriber, subscriber, identifier))

    def remove_task_subscriber(self, identifier: str) -> None:
        """Remove a task subscriber."""
        self._call(self._comm.remove_task_subscriber, identifier)

    def add_rpc_subscriber(self, subscriber: Subscriber, identifier: Any = None) -> str:
        """Add ``subscriber(comm, msg)`` for RPCs to ``identifier`` (any value: a
        ``uuid.UUID`` is used as its string, as kiwiPy does); returns the identifier."""
        return str(self._call(self._comm.add_rpc_subscriber, subscriber, identifier))

    def remove_rpc_subscriber(self, identifier: Any) -> None:
        """Remove an RPC subscriber."""
        self._call(self._comm.remove_rpc_subscriber, identifier)

    def add_broadcast_subscriber(
        self, subscriber: Subscriber, identifier: str | None = None
    ) -> str:
        """Add ``subscriber(comm, body, sender, subject, correlation_id)``."""
        return str(self._call(self._comm.add_broadcast_subscriber, subscriber, identifier))

    def remove_broadcast_subscriber(self, identifier: str) -> None:
        """Remove a broadcast subscriber."""
        self._call(self._comm.remove_broadcast_subscriber, identifier)


def open_blocking(comm: Communicator, backend: str = "asyncio") -> BlockingCommunicator:
    """Start the event loop thread and connect ``comm`` in it."""
    blocking = BlockingCommunicator(comm, backend)
    blocking._open()
    return blocking

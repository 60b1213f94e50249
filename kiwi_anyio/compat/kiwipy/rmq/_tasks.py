"""What the thread and the asyncio compat task APIs share, written once: the view of a
task taken from a queue, its outcome future (garbage-collected unresolved, the task is
requeued, as in kiwiPy), kiwiPy's error for an unroutable task, and the send-only queue of
kiwiPy's bare ``RmqTaskPublisher``.

It wraps kiwi_anyio's task classes and must not change what they do for kiwi_anyio's own
callers: :class:`SendOnlyQueue` overrides only how its queue is declared (not at all), and
nothing here touches the task protocol, the codecs or the wire format."""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol, TypeVar

from ....blocking import BlockingIncomingTask
from ....exceptions import MessageReturned, UnroutableError
from ....futures import Future as KiwiFuture
from ....patterns.pull import IncomingTask
from ....patterns.tasks import TaskQueue
from ..exceptions import TaskUnroutable, task_unroutable_class
from ..futures import chain

__all__ = [
    "IncomingTaskView",
    "SendOnlyQueue",
    "follow_outcome",
    "kiwipy_task_errors",
    "settles",
]


class _Outcome(Protocol):
    """A thread or asyncio future, as far as an outcome needs one."""

    def add_done_callback(self, fn: Any, /) -> Any: ...
    def done(self) -> bool: ...
    def set_exception(self, exception: BaseException, /) -> None: ...


OutcomeT = TypeVar("OutcomeT", bound=_Outcome)


def _forgotten(outcome: KiwiFuture[Any]) -> None:
    if not outcome.done():  # garbage-collected unresolved: requeue (kiwiPy's behaviour)
        outcome.cancel()


def follow_outcome(outcome: KiwiFuture[Any], future: OutcomeT) -> OutcomeT:
    """Give out ``future`` (a thread or asyncio future) for the task outcome ``outcome``:
    what is set on ``future`` is copied to ``outcome``; if ``future`` is garbage-collected
    unresolved, ``outcome`` is cancelled, which requeues the task (kiwiPy's behaviour)."""
    chain(future, outcome)
    weakref.finalize(future, _forgotten, outcome)
    return future


@contextmanager
def settles(outcome: OutcomeT) -> Iterator[OutcomeT]:
    """The body of ``processing()``: an exception raised in the block becomes the outcome
    (unless it is set already), and is raised on."""
    try:
        yield outcome
    except Exception as exc:
        if not outcome.done():
            outcome.set_exception(exc)
        raise


class IncomingTaskView:
    """The read-only part of kiwiPy's incoming task, read from the task it wraps."""

    def __init__(self, task: BlockingIncomingTask | IncomingTask) -> None:
        self._view = task

    @property
    def body(self) -> Any:
        """The task."""
        return self._view.body

    @property
    def no_reply(self) -> bool:
        """True if the sender does not wait for a result."""
        return self._view.no_reply

    @property
    def state(self) -> str:
        """``pending``, ``processing``, ``finished`` or ``requeued``."""
        return self._view.state


@contextmanager
def kiwipy_task_errors() -> Iterator[None]:
    """Raise kiwiPy's error for a task no queue took: a :class:`TaskUnroutable`, which is
    also aio-pika's ``DeliveryError`` when aio-pika is importable (see
    :func:`~kiwi_anyio.compat.kiwipy.exceptions.task_unroutable_class`)."""
    try:
        yield
    except TaskUnroutable:
        raise
    except (UnroutableError, MessageReturned) as exc:  # the client's return, or the library's
        raise task_unroutable_class()(str(exc), _returned(exc)) from exc


def _returned(exc: BaseException) -> MessageReturned | None:
    """The broker's return behind ``exc``: itself, its ``__cause__`` or its ``__context__``."""
    for candidate in (exc, exc.__cause__, exc.__context__):
        if isinstance(candidate, MessageReturned):
            return candidate
    return None


class SendOnlyQueue(TaskQueue):
    """kiwiPy's bare ``RmqTaskPublisher``: sends to the queue's name on the task exchange,
    declaring the exchange but not the queue, so with no queue bound a task is unroutable
    (kiwiPy: aio-pika's ``DeliveryError``). Only ``task_send`` is used on it."""

    async def _ensure_declared(self) -> None:
        await self._tasks.link.ensure_exchange(self.exchange)

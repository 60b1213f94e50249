"""Taking tasks one at a time (pull): :class:`IncomingTask` and ``async for task in queue``.

:meth:`~kiwi_anyio.TaskQueue.next_task` and ``async for`` hand out :class:`IncomingTask`
objects; the caller processes each and sets its outcome, and the task is answered and acked
when the block (or the iteration step) ends, or requeued if it was never processed.

It uses the queue's serving (replies); it must not consume or declare anything itself.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Self

import anyio

from .. import _wire as wire
from .. import typed
from ..channel import Message
from ..futures import Future

if TYPE_CHECKING:
    from .tasks import TaskQueue

__all__ = ["IncomingTask", "TaskIterator"]


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
            tg = self._queue._tasks.link.tg
            assert tg is not None
            tg.start_soon(self._finish_later)
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
        if outcome.cancelled():
            await self.requeue()
            return
        if not self.no_reply:
            exc = outcome.exception()
            reply = (
                typed.attach_error_headers(wire.exception_reply(exc, with_host=True), exc)
                if exc is not None
                else wire.result_reply(outcome.result(), with_host=True)
            )
            queue = self._queue
            await queue._tasks.serving.send_reply(
                self._message, reply, queue.exchange, log=queue._log
            )
        self.state = "finished"
        if self._message.channel.is_open:
            self._message.ack()


class TaskIterator:
    """``async for task in queue``: every task now in the queue (see ``TaskQueue``)."""

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

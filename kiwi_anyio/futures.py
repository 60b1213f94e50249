"""Futures that work on trio and asyncio (and can be resolved from a worker thread).

:class:`Future` is what ``task_send`` and ``rpc_send`` give back. ``await fut`` waits for the
result; cancelling that await cancels the future, which discards the pending reply (and
nothing else). ``await fut.wait(timeout)`` waits with a timeout and leaves the future
pending when it runs out.

As in kiwiPy, a remote subscriber that answers "pending" first makes the future resolve to
another :class:`Future` (one level per "pending"); :meth:`Future.unwrap` follows the chain.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Callable, Generator
from typing import Any, Generic, TypeVar

import anyio

from ._signal import Signal, new_signal

__all__ = ["CancelledError", "Future", "InvalidStateError"]

T = TypeVar("T")

CancelledError = concurrent.futures.CancelledError
InvalidStateError = concurrent.futures.InvalidStateError

_PENDING, _FINISHED, _CANCELLED = "PENDING", "FINISHED", "CANCELLED"


class Future(Generic[T]):
    """The eventual result of an operation; awaitable on trio and asyncio.

    ``set_result``, ``set_exception`` and ``cancel`` may be called from the event loop or
    from a worker thread.
    """

    __slots__ = (
        "_callbacks",
        "_event",
        "_exception",
        "_lock",
        "_loop_thread",
        "_state",
        "_value",
    )

    def __init__(self) -> None:
        self._state = _PENDING
        self._value: Any = None
        self._exception: BaseException | None = None
        self._callbacks: list[Callable[[Future[T]], object]] = []
        self._event: Signal | None = None
        self._loop_thread: int | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        if self._state == _FINISHED:
            outcome = (
                f" exception={self._exception!r}" if self._exception else f" result={self._value!r}"
            )
        else:
            outcome = ""
        return f"<Future {self._state.lower()}{outcome}>"

    # ------------------------------------------------------------ inspection

    def done(self) -> bool:
        """True once the future has a result, an exception, or was cancelled."""
        return self._state != _PENDING

    def cancelled(self) -> bool:
        """True if the future was cancelled."""
        return self._state == _CANCELLED

    def result(self) -> T:
        """Return the result now.

        Raises:
            InvalidStateError: the future is not done yet (await it instead).
            CancelledError: the future was cancelled.
            Exception: whatever exception was set (e.g. ``RemoteException``).
        """
        if self._state == _PENDING:
            raise InvalidStateError("the future is not done yet: await it")
        if self._state == _CANCELLED:
            raise CancelledError()
        if self._exception is not None:
            raise self._exception
        return self._value  # type: ignore[no-any-return]

    def exception(self) -> BaseException | None:
        """Return the exception set on the future (None for a result)."""
        if self._state == _PENDING:
            raise InvalidStateError("the future is not done yet: await it")
        if self._state == _CANCELLED:
            raise CancelledError()
        return self._exception

    # ------------------------------------------------------------ completion

    def set_result(self, result: T) -> None:
        """Resolve the future with ``result``.

        Raises:
            InvalidStateError: it is already done.
        """
        self._finish(_FINISHED, result, None)

    def set_exception(self, exception: BaseException) -> None:
        """Resolve the future with an exception."""
        self._finish(_FINISHED, None, exception)

    def cancel(self) -> bool:
        """Cancel the future; returns False if it was already done."""
        with self._lock:
            if self._state != _PENDING:
                return False
        self._finish(_CANCELLED, None, None)
        return True

    def add_done_callback(self, fn: Callable[[Future[T]], object]) -> None:
        """Call ``fn(future)`` once the future is done (now, if it already is)."""
        with self._lock:
            if self._state == _PENDING:
                self._callbacks.append(fn)
                return
        fn(self)

    def _finish(self, state: str, value: Any, exception: BaseException | None) -> None:
        with self._lock:
            if self._state != _PENDING:
                raise InvalidStateError(f"the future is already {self._state.lower()}")
            self._state = state
            self._value = value
            self._exception = exception
            callbacks, self._callbacks = self._callbacks, []
            event = self._event
        if event is not None:
            if self._loop_thread == threading.get_ident():
                event.set()
            else:
                try:
                    event.set_threadsafe()
                except RuntimeError:  # the event loop is gone: nobody waits any more
                    pass
        for callback in callbacks:
            callback(self)

    # ------------------------------------------------------------ waiting

    def _get_event(self) -> Signal:
        with self._lock:
            if self._event is None:
                self._event = new_signal()
                self._loop_thread = threading.get_ident()
                if self._state != _PENDING:
                    self._event.set()
            return self._event

    async def wait(self, timeout: float | None = None) -> T:
        """Wait for the result, at most ``timeout`` seconds.

        Raises:
            TimeoutError: the time ran out; the future stays pending (unlike cancelling
                ``await fut``, which cancels it).
        """
        if self._state == _PENDING:
            event = self._get_event()
            with anyio.move_on_after(timeout, shield=False) as scope:
                await event.wait()
            if scope.cancelled_caught and self._state == _PENDING:
                raise TimeoutError(f"no result within {timeout} s")
        return self.result()

    async def _await(self) -> T:
        if self._state == _PENDING:
            event = self._get_event()
            try:
                await event.wait()
            except BaseException:
                if self._state == _PENDING:
                    self.cancel()
                raise
        return self.result()

    def __await__(self) -> Generator[Any, None, T]:
        return self._await().__await__()

    async def unwrap(self, timeout: float | None = None) -> Any:
        """Await the result, and the result of every future it resolves to (kiwiPy's
        "pending" replies nest futures), returning the final value."""
        with anyio.fail_after(timeout):
            result: Any = await self
            while isinstance(result, Future):
                result = await result
        return result

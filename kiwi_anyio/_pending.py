"""Requests waiting for their reply: every one of them ends.

:class:`PendingReplies` holds the future of every request sent with a reply wanted, by
correlation id. A future ends with its reply, or when the caller cancels it, or at its
deadline: the request's ``timeout`` (:class:`~kiwi_anyio.RequestTimeout`), or the end of a
grace period once the request is known to be at risk (its reply queue or the broker's state
was lost: :class:`~kiwi_anyio.RequestLost`). One task (:meth:`PendingReplies.run`, in the
communicator's task group) expires them, whatever their number: deadlines are kept in a heap.
"""

from __future__ import annotations

import enum
import heapq
import math
from collections.abc import Callable
from typing import Any, Final, Literal

import anyio

from .exceptions import RequestLost, RequestTimeout
from .futures import Future

__all__ = ["DEFAULT", "PendingReplies", "Timeout"]


class _Default(enum.Enum):
    DEFAULT = "DEFAULT"


#: The ``timeout`` of a send when none is given: the communicator's ``request_timeout``.
DEFAULT: Final = _Default.DEFAULT
#: What a send's ``timeout`` may be: seconds, ``None`` (no limit) or :data:`DEFAULT`.
Timeout = float | None | Literal[_Default.DEFAULT]

_ErrorFactory = Callable[[], BaseException]


class _Entry:
    __slots__ = ("deadline", "durable", "error", "future", "what")

    def __init__(self, future: Future[Any], what: str, durable: bool) -> None:
        self.future = future
        self.what = what
        self.durable = durable
        self.deadline = math.inf
        self.error: _ErrorFactory | None = None


class PendingReplies:
    """The futures of requests that wait for a reply, and their deadlines."""

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}
        self._heap: list[tuple[float, int, str]] = []
        self._seq = 0
        self._wake: anyio.Event | None = None
        self._next_wake = math.inf

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, correlation_id: str) -> bool:
        return correlation_id in self._entries

    def add(
        self, correlation_id: str, what: str, timeout: float | None, *, durable: bool = False
    ) -> Future[Any]:
        """A new future for the reply to ``correlation_id``, failed after ``timeout`` s.

        ``durable``: the request and its reply survive a broker restart (a persistent task
        in a durable queue); see :meth:`at_risk`.
        """
        future: Future[Any] = Future()
        entry = _Entry(future, what, durable)
        self._entries[correlation_id] = entry

        def forget(f: Future[Any]) -> None:
            # a caller's cancel (or a result set from elsewhere) frees the entry at once
            current = self._entries.get(correlation_id)
            if current is not None and current.future is f:
                del self._entries[correlation_id]

        future.add_done_callback(forget)
        if timeout is not None:
            if timeout < 0 or math.isnan(timeout):
                raise ValueError(f"timeout must be None or >= 0, not {timeout!r}")

            def timed_out() -> BaseException:
                return RequestTimeout(f"no reply to {what} within {timeout:g} s")

            self._set_deadline(correlation_id, entry, anyio.current_time() + timeout, timed_out)
        return future

    def pop(self, correlation_id: str) -> Future[Any] | None:
        """The future waiting for ``correlation_id`` (no longer pending), or None."""
        entry = self._entries.pop(correlation_id, None)
        return None if entry is None else entry.future

    def discard(self, correlation_id: str) -> None:
        """Forget a request that was never sent (its future is cancelled)."""
        future = self.pop(correlation_id)
        if future is not None:
            future.cancel()

    def at_risk(self, grace: float, reason: str, *, durable: bool) -> int:
        """Pending requests may have lost their reply: fail those still pending after
        ``grace`` seconds (unless their own deadline comes first). ``durable``: durable
        requests too (else only the others). Returns how many are at risk."""
        deadline = anyio.current_time() + grace
        count = 0
        for correlation_id, entry in list(self._entries.items()):
            if entry.durable and not durable:
                continue
            count += 1
            what = entry.what

            def lost(what: str = what) -> BaseException:
                return RequestLost(
                    f"{what} may have been handled, but no reply came within {grace:g} s "
                    f"after {reason}"
                )

            self._set_deadline(correlation_id, entry, deadline, lost)
        return count

    def fail_all(self, error: BaseException) -> None:
        """End every pending future with ``error`` now (the communicator closes)."""
        entries, self._entries = self._entries, {}
        self._heap.clear()
        for entry in entries.values():
            if not entry.future.done():
                entry.future.set_exception(error)

    def _set_deadline(
        self, correlation_id: str, entry: _Entry, deadline: float, error: _ErrorFactory
    ) -> None:
        if deadline >= entry.deadline:
            return
        entry.deadline = deadline
        entry.error = error
        self._seq += 1
        heap = self._heap
        if len(heap) > 2 * len(self._entries) + 1024:
            # most of the heap is answered requests: keep only the live deadlines
            heap[:] = [item for item in heap if item[2] in self._entries]
            heapq.heapify(heap)
        heapq.heappush(heap, (deadline, self._seq, correlation_id))
        if deadline < self._next_wake and self._wake is not None:
            self._wake.set()

    def _expire(self, now: float) -> None:
        heap = self._heap
        while heap and heap[0][0] <= now:
            deadline, _seq, correlation_id = heapq.heappop(heap)
            entry = self._entries.get(correlation_id)
            if entry is None or entry.deadline != deadline or entry.error is None:
                continue  # answered meanwhile, or a later entry of the heap replaced this one
            del self._entries[correlation_id]
            if not entry.future.done():
                entry.future.set_exception(entry.error())

    async def run(self) -> None:
        """Expire futures at their deadlines, until cancelled."""
        while True:
            self._expire(anyio.current_time())
            self._next_wake = self._heap[0][0] if self._heap else math.inf
            self._wake = anyio.Event()
            with anyio.move_on_after(self._next_wake - anyio.current_time()):
                await self._wake.wait()

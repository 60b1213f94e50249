"""kiwiPy's futures helpers (``kiwipy.futures``): thread futures, ``capture_exceptions``,
``copy_future`` and ``chain``.

``Future`` is :class:`concurrent.futures.Future`, as in kiwiPy: the blocking communicator's
``task_send``/``rpc_send`` return them, and plumpy creates them itself.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = [
    "CancelledError",
    "Future",
    "as_completed",
    "capture_exceptions",
    "chain",
    "copy_future",
    "wait",
]

Future = concurrent.futures.Future
CancelledError = concurrent.futures.CancelledError
wait = concurrent.futures.wait
as_completed = concurrent.futures.as_completed


@contextmanager
def capture_exceptions(future: Any, ignore: tuple[type[BaseException], ...] = ()) -> Iterator[None]:
    """Set any :class:`Exception` raised in the block on ``future`` instead of raising it.

    ``ignore``: exception types that are re-raised, not captured. Works with any future that
    has ``set_exception`` (thread, asyncio or kiwi_anyio futures).
    """
    try:
        yield
    except ignore:
        raise
    except Exception as exc:
        future.set_exception(exc)


def copy_future(source: Any, target: Any) -> None:
    """Copy the outcome of the done future ``source`` to ``target`` (nothing if ``target``
    is done already): a cancelled source cancels the target, an exception is set on it."""
    if target.done():
        return
    if source.cancelled():
        target.cancel()
        return
    with capture_exceptions(target):
        target.set_result(source.result())


def chain(source: Any, target: Any) -> None:
    """Copy ``source``'s outcome to ``target`` once ``source`` is done."""
    source.add_done_callback(lambda done: copy_future(done, target))

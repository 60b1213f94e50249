"""kiwiPy's exception names (``kiwipy.exceptions``), as kiwi_anyio's own classes.

They are the very classes kiwi_anyio raises, so ``except kiwipy.UnroutableError`` catches what
a compat communicator raises. ``TimeoutError`` is the builtin (kiwiPy's
``concurrent.futures.TimeoutError`` is the builtin on Python 3.11+).

One class is the compat layer's own: :class:`TaskUnroutable`, raised by the compat
``task_send`` when no queue took the task. kiwiPy raises aio-pika's ``DeliveryError`` there;
when aio-pika is importable, the class raised is both (:func:`task_unroutable_class`).
"""

from __future__ import annotations

import importlib
from typing import Any

from pamqp.commands import Basic

from ...exceptions import (
    CommunicatorClosed,
    DeliveryFailed,
    DuplicateSubscriberIdentifier,
    QueueEmpty,
    RemoteException,
    TaskRejected,
    UnroutableError,
)
from ...futures import InvalidStateError

TimeoutError = TimeoutError

__all__ = [
    "CommunicatorClosed",
    "DeliveryFailed",
    "DuplicateSubscriberIdentifier",
    "InvalidStateError",
    "QueueEmpty",
    "RemoteException",
    "TaskRejected",
    "TaskUnroutable",
    "TimeoutError",
    "UnroutableError",
    "task_unroutable_class",
]


class TaskUnroutable(UnroutableError):
    """No queue took the task (kiwiPy's ``task_send`` raises aio-pika's ``DeliveryError``).

    An :class:`UnroutableError`, so ``except kiwipy.UnroutableError`` catches it; raised as
    :func:`task_unroutable_class`'s class, it is also aio-pika's ``DeliveryError``.

    Attributes:
        frame: the broker's ``Basic.Return`` (a pamqp frame, as on aio-pika's error; its
            ``reply_code``, ``reply_text``, ``exchange``, ``routing_key``), or ``None`` when
            the broker's return is not known.
        message: ``None`` (aio-pika's error carries the returned message; this one does not).
    """

    def __init__(self, text: str, returned: Any = None) -> None:
        # not super().__init__: with aio-pika's DeliveryError in the bases, that would be
        # DeliveryError(message, frame); the attributes it sets are set here
        Exception.__init__(self, text)
        self.message: Any = None
        self.frame: Any = (
            None
            if returned is None
            else Basic.Return(
                reply_code=returned.reply_code,
                reply_text=returned.reply_text,
                exchange=returned.exchange,
                routing_key=returned.routing_key,
            )
        )

    def __str__(self) -> str:
        return str(self.args[0])

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.args[0]!r})"


_classes: dict[type[Exception], type[TaskUnroutable]] = {}


def _aio_pika_delivery_error() -> type[Exception] | None:
    try:
        module = importlib.import_module("aio_pika.exceptions")
    except ImportError:
        return None
    error: type[Exception] = module.DeliveryError
    return error


def task_unroutable_class(delivery_error: type[Exception] | None = None) -> type[TaskUnroutable]:
    """The class the compat ``task_send`` raises for a task no queue took.

    A subclass of both :class:`TaskUnroutable` and ``delivery_error``, by default aio-pika's
    ``aio_pika.exceptions.DeliveryError`` when aio-pika is importable (so ``except
    aio_pika.exceptions.DeliveryError``, as kiwiPy's callers write, catches it); with no
    such class, :class:`TaskUnroutable` itself. aio-pika is not a dependency: it is imported
    only here, when the first such error is raised. ``delivery_error.__init__`` is not
    called: the error sets the ``message`` and ``frame`` attributes that aio-pika's
    ``DeliveryError(message, frame)`` sets. One class per ``delivery_error``.
    """
    base = delivery_error or _aio_pika_delivery_error()
    if base is None:
        return TaskUnroutable
    cls = _classes.get(base)
    if cls is None:
        cls = _classes[base] = type(
            "TaskUnroutable",
            (TaskUnroutable, base),
            {"__module__": __name__, "__doc__": TaskUnroutable.__doc__},
        )
    return cls

"""kiwiPy's exception names (``kiwipy.exceptions``), as kiwi_anyio's own classes.

They are the very classes kiwi_anyio raises, so ``except kiwipy.UnroutableError`` catches what
a compat communicator raises. ``TimeoutError`` is the builtin (kiwiPy's
``concurrent.futures.TimeoutError`` is the builtin on Python 3.11+).
"""

from __future__ import annotations

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
    "TimeoutError",
    "UnroutableError",
]

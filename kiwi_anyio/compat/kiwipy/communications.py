"""kiwiPy's ``Communicator`` interface and ``CommunicatorHelper`` (``kiwipy.communications``).

:class:`Communicator` is the abstract base kiwiPy's clients subclass (plumpy's
``LoopCommunicator``) and annotate with; the compat ``RmqThreadCommunicator`` is one.
:class:`CommunicatorHelper` dispatches in-process, as kiwiPy's does: it is the base of
:class:`~kiwi_anyio.compat.kiwipy.local.LocalCommunicator` and of plumpy's test doubles.
"""

from __future__ import annotations

import abc
import concurrent.futures
import logging
import uuid
from typing import Any

from ...exceptions import (
    CommunicatorClosed,
    DeliveryFailed,
    DuplicateSubscriberIdentifier,
    QueueEmpty,
    RemoteException,
    TaskRejected,
    UnroutableError,
)
from .futures import Future

__all__ = [
    "Communicator",
    "CommunicatorClosed",
    "CommunicatorHelper",
    "DeliveryFailed",
    "DuplicateSubscriberIdentifier",
    "QueueEmpty",
    "RemoteException",
    "TaskRejected",
    "TimeoutError",
    "UnroutableError",
]

TimeoutError = TimeoutError

logger = logging.getLogger(__name__)


class Communicator(abc.ABC):
    """kiwiPy's communicator interface: RPC, tasks and broadcasts, with thread futures."""

    @abc.abstractmethod
    def is_closed(self) -> bool:
        """True once closed."""

    @abc.abstractmethod
    def close(self) -> None:
        """Close, free the resources, refuse further operations."""

    @abc.abstractmethod
    def add_rpc_subscriber(self, subscriber: Any, identifier: Any = None) -> Any:
        """Add ``subscriber(comm, msg)``; returns its identifier."""

    @abc.abstractmethod
    def remove_rpc_subscriber(self, identifier: Any) -> None:
        """Remove an RPC subscriber (``ValueError`` if unknown)."""

    @abc.abstractmethod
    def add_task_subscriber(self, subscriber: Any, identifier: Any = None) -> Any:
        """Add ``subscriber(comm, task)``; returns its identifier."""

    @abc.abstractmethod
    def remove_task_subscriber(self, identifier: Any) -> None:
        """Remove a task subscriber (``ValueError`` if unknown)."""

    @abc.abstractmethod
    def add_broadcast_subscriber(self, subscriber: Any, identifier: Any = None) -> Any:
        """Add ``subscriber(comm, body, sender, subject, correlation_id)``."""

    @abc.abstractmethod
    def remove_broadcast_subscriber(self, identifier: Any) -> None:
        """Remove a broadcast subscriber."""

    @abc.abstractmethod
    def task_send(self, task: Any, no_reply: bool = False) -> Any:
        """Send a task; returns a future of its result (None with ``no_reply``)."""

    @abc.abstractmethod
    def rpc_send(self, recipient_id: Any, msg: Any) -> Any:
        """Call an RPC subscriber; returns a future of its reply."""

    @abc.abstractmethod
    def broadcast_send(
        self, body: Any, sender: Any = None, subject: Any = None, correlation_id: Any = None
    ) -> Any:
        """Send a broadcast."""

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class CommunicatorHelper(Communicator):
    """In-process dispatch to subscribers, kiwiPy's ``CommunicatorHelper``.

    ``fire_task`` tries the task subscribers in order (``TaskRejected`` passes the task on; a
    returned value, even a future, is the result; another exception becomes a
    ``RemoteException``); ``fire_rpc`` raises ``UnroutableError`` at once for an unknown
    recipient; ``fire_broadcast`` calls every broadcast subscriber (the body, sender,
    subject and correlation id as keywords). A task nobody accepts leaves its future pending,
    as in kiwiPy. One deliberate change: the duplicate check of task subscribers looks at
    the task subscribers (kiwiPy's looks at the RPC ones).
    """

    def __init__(self) -> None:
        self._task_subscribers: dict[Any, Any] = {}
        self._broadcast_subscribers: dict[Any, Any] = {}
        self._rpc_subscribers: dict[Any, Any] = {}
        self._closed = False

    def is_closed(self) -> bool:
        """True once closed."""
        return self._closed

    def close(self) -> None:
        """Close (idempotent): drop every subscriber."""
        if self._closed:
            return
        self._closed = True
        self._task_subscribers = {}
        self._broadcast_subscribers = {}
        self._rpc_subscribers = {}

    def _ensure_open(self) -> None:
        if self._closed:
            raise CommunicatorClosed("the communicator is closed")

    def _add(self, table: dict[Any, Any], kind: str, subscriber: Any, identifier: Any) -> Any:
        self._ensure_open()
        identifier = identifier or uuid.uuid4().hex
        if identifier in table:
            raise DuplicateSubscriberIdentifier(f"{kind} subscriber {identifier!r} exists")
        table[identifier] = subscriber
        return identifier

    @staticmethod
    def _remove(table: dict[Any, Any], kind: str, identifier: Any) -> None:
        try:
            del table[identifier]
        except KeyError:
            raise ValueError(f"unknown {kind} subscriber {identifier!r}") from None

    def add_rpc_subscriber(self, subscriber: Any, identifier: Any = None) -> Any:
        """Add ``subscriber(comm, msg)``; returns its identifier."""
        return self._add(self._rpc_subscribers, "RPC", subscriber, identifier)

    def remove_rpc_subscriber(self, identifier: Any) -> None:
        """Remove an RPC subscriber (``ValueError`` if unknown)."""
        self._remove(self._rpc_subscribers, "RPC", identifier)

    def add_task_subscriber(self, subscriber: Any, identifier: Any = None) -> Any:
        """Add ``subscriber(comm, task)``; returns its identifier."""
        return self._add(self._task_subscribers, "task", subscriber, identifier)

    def remove_task_subscriber(self, identifier: Any) -> None:
        """Remove a task subscriber (``ValueError`` if unknown)."""
        self._remove(self._task_subscribers, "task", identifier)

    def add_broadcast_subscriber(self, subscriber: Any, identifier: Any = None) -> Any:
        """Add ``subscriber(comm, body, sender, subject, correlation_id)``."""
        return self._add(self._broadcast_subscribers, "broadcast", subscriber, identifier)

    def remove_broadcast_subscriber(self, identifier: Any) -> None:
        """Remove a broadcast subscriber (``ValueError`` if unknown)."""
        self._remove(self._broadcast_subscribers, "broadcast", identifier)

    def fire_task(self, msg: Any, no_reply: bool = False) -> concurrent.futures.Future[Any] | None:
        """Hand ``msg`` to the first task subscriber that accepts it."""
        self._ensure_open()
        future: concurrent.futures.Future[Any] = Future()
        for subscriber in list(self._task_subscribers.values()):
            try:
                result = subscriber(self, msg)
            except TaskRejected:
                continue
            except Exception as exc:
                future.set_exception(RemoteException(str(exc), type(exc).__name__))
            else:
                future.set_result(result)
            break
        # nobody accepted it: the future stays pending, as kiwiPy's does (a local
        # communicator has no queue to keep the task in)
        return None if no_reply else future

    def fire_rpc(self, recipient_id: Any, msg: Any) -> concurrent.futures.Future[Any]:
        """Call the RPC subscriber ``recipient_id`` (``UnroutableError`` if none)."""
        self._ensure_open()
        try:
            subscriber = self._rpc_subscribers[recipient_id]
        except KeyError:
            raise UnroutableError(f"unknown rpc recipient {recipient_id!r}") from None
        future: concurrent.futures.Future[Any] = Future()
        try:
            future.set_result(subscriber(self, msg))
        except Exception as exc:
            future.set_exception(RemoteException(str(exc), type(exc).__name__))
        return future

    def fire_broadcast(
        self, body: Any, sender: Any = None, subject: Any = None, correlation_id: Any = None
    ) -> bool:
        """Call every broadcast subscriber (keyword arguments); returns True."""
        self._ensure_open()
        for subscriber in list(self._broadcast_subscribers.values()):
            subscriber(
                self,
                body=body,
                sender=sender,
                subject=subject,
                correlation_id=correlation_id,
            )
        return True

    def task_send(self, task: Any, no_reply: bool = False) -> concurrent.futures.Future[Any] | None:
        """``fire_task``."""
        return self.fire_task(task, no_reply)

    def rpc_send(self, recipient_id: Any, msg: Any) -> concurrent.futures.Future[Any]:
        """``fire_rpc``."""
        return self.fire_rpc(recipient_id, msg)

    def broadcast_send(
        self, body: Any, sender: Any = None, subject: Any = None, correlation_id: Any = None
    ) -> bool:
        """``fire_broadcast``."""
        return self.fire_broadcast(body, sender, subject, correlation_id)

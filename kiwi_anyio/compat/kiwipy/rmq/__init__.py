"""kiwiPy's ``kiwipy.rmq``: the RabbitMQ communicators, on kiwi_anyio.

* :class:`RmqThreadCommunicator` (``RmqThreadCommunicator.connect(...)``, :func:`connect`):
  the thread API, on :mod:`kiwi_anyio.blocking`;
* :class:`RmqCommunicator` (:func:`async_connect`): the asyncio API, on
  :class:`kiwi_anyio.Communicator`.
"""

from __future__ import annotations

from . import defaults as defaults
from .communicator import (
    RmqCommunicator,
    RmqIncomingTask,
    RmqTaskPublisher,
    RmqTaskQueue,
    async_connect,
)
from .threadcomms import (
    RmqThreadCommunicator,
    RmqThreadIncomingTask,
    RmqThreadTaskQueue,
    connect,
)

RmqTaskSubscriber = RmqTaskQueue  # kiwiPy's subscriber half of a task queue

__all__ = [
    "RmqCommunicator",
    "RmqIncomingTask",
    "RmqTaskPublisher",
    "RmqTaskQueue",
    "RmqTaskSubscriber",
    "RmqThreadCommunicator",
    "RmqThreadIncomingTask",
    "RmqThreadTaskQueue",
    "async_connect",
    "connect",
]

"""kiwi_anyio: kiwiPy's tasks, broadcasts and RPC over RabbitMQ, for trio and asyncio.

::

    async with kiwi_anyio.connect("amqp://localhost") as comm:
        await comm.add_task_subscriber(lambda comm, task: task * 2)
        result = await (await comm.task_send(21))

Everything here speaks kiwiPy 0.9's wire format.
"""

from __future__ import annotations

import logging

from . import codecs as codecs
from ._version import __version__ as __version__
from .app import App as App
from .communicator import Communicator as Communicator
from .communicator import IncomingTask as IncomingTask
from .communicator import TaskQueue as TaskQueue
from .communicator import connect as connect
from .exceptions import *  # noqa: F403
from .exceptions import __all__ as _exceptions_all
from .filters import BroadcastFilter as BroadcastFilter
from .futures import CancelledError as CancelledError
from .futures import Future as Future
from .futures import InvalidStateError as InvalidStateError
from .typed import register_remote_error as register_remote_error

TimeoutError = TimeoutError  # kiwiPy exports the builtin under this name

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "App",
    "BroadcastFilter",
    "CancelledError",
    "Communicator",
    "Future",
    "IncomingTask",
    "InvalidStateError",
    "TaskQueue",
    "TimeoutError",
    "codecs",
    "connect",
    "register_remote_error",
    *_exceptions_all,
]

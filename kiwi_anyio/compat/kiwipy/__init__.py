"""A stand-in for kiwiPy 0.9 (``kiwipy``), on kiwi_anyio.

kiwiPy's clients (plumpy, aiida-core) switch with one line, run before they import
``kiwipy``::

    import kiwi_anyio.compat.kiwipy; kiwi_anyio.compat.kiwipy.install()

:func:`install` registers this package as ``kiwipy`` (and its modules as ``kiwipy.rmq``,
``kiwipy.futures``, ``kiwipy.communications``, ``kiwipy.exceptions``, ``kiwipy.filters``,
``kiwipy.local``, ``kiwipy.utils``, ``kiwipy.rmq.defaults``...) in ``sys.modules``. Code
may also import it by its own name.

The names are kiwiPy's, mapped onto kiwi_anyio's API: the exceptions are kiwi_anyio's own
classes, ``Future`` is ``concurrent.futures.Future``, :class:`BroadcastFilter` has kiwiPy's
matching rules. Decoding stays safe (plus ``uuid.UUID``); ``install(full_loader=True)``
gives kiwiPy's ``FullLoader`` (unsafe). See ``docs/coming-from-kiwipy.md`` for the rest.
"""

from __future__ import annotations

import logging
import sys

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
from . import communications, exceptions, filters, futures, local, rmq, utils
from .communications import Communicator, CommunicatorHelper
from .filters import BroadcastFilter
from .futures import (
    CancelledError,
    Future,
    as_completed,
    capture_exceptions,
    chain,
    copy_future,
    wait,
)
from .local import LocalCommunicator
from .rmq import defaults as _defaults
from .utils import EventHelper

TimeoutError = TimeoutError

__version__ = "0.9.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "BroadcastFilter",
    "CancelledError",
    "Communicator",
    "CommunicatorClosed",
    "CommunicatorHelper",
    "DeliveryFailed",
    "DuplicateSubscriberIdentifier",
    "EventHelper",
    "Future",
    "InvalidStateError",
    "LocalCommunicator",
    "QueueEmpty",
    "RemoteException",
    "TaskRejected",
    "TimeoutError",
    "UnroutableError",
    "as_completed",
    "capture_exceptions",
    "chain",
    "communications",
    "connect",
    "copy_future",
    "exceptions",
    "filters",
    "futures",
    "install",
    "local",
    "rmq",
    "utils",
    "wait",
]


def connect(
    uri: str = "amqp://guest:guest@127.0.0.1/", **kwargs: object
) -> rmq.RmqThreadCommunicator:
    """kiwiPy's ``kiwipy.connect(uri, ...)``: a connected thread communicator for an
    ``amqp://``/``amqps://`` URI (``ValueError`` for any other)."""
    if not uri.startswith("amqp"):
        raise ValueError(f"Unknown communicator uri '{uri}'")
    return rmq.connect(connection_params=uri, **kwargs)  # type: ignore[arg-type]


def install(*, full_loader: bool = False) -> None:
    """Make ``import kiwipy`` (and ``kiwipy.rmq`` ...) give this package.

    Call it before anything imports kiwiPy. Idempotent.

    Args:
        full_loader: decode messages as kiwiPy does, with PyYAML's ``FullLoader``
            (**unsafe**: it resolves ``!!python/name:`` tags; anyone who can publish to the
            broker chooses what is built), for communicators made without an explicit
            ``encoder``/``decoder``. Default: kiwi_anyio's safe decoding, plus ``uuid.UUID``.
    """
    _defaults.use_full_loader = full_loader
    package = sys.modules[__name__]
    modules = {
        "kiwipy": package,
        "kiwipy.communications": communications,
        "kiwipy.exceptions": exceptions,
        "kiwipy.filters": filters,
        "kiwipy.futures": futures,
        "kiwipy.local": local,
        "kiwipy.utils": utils,
        "kiwipy.rmq": rmq,
        "kiwipy.rmq.defaults": _defaults,
        "kiwipy.rmq.communicator": rmq.communicator,
        "kiwipy.rmq.threadcomms": rmq.threadcomms,
        "kiwipy.rmq.tasks": rmq.communicator,
    }
    for name, module in modules.items():
        existing = sys.modules.get(name)
        if name == "kiwipy" and existing is not None and existing is not module:
            raise RuntimeError(
                f"kiwiPy itself is already imported ({existing.__file__}): call "
                "kiwi_anyio.compat.kiwipy.install() before anything imports kiwipy"
            )
        sys.modules[name] = module

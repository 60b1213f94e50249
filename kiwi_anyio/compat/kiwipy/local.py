"""kiwiPy's ``LocalCommunicator``: synchronous in-process dispatch, for tests.

For an in-process broker with RabbitMQ's semantics (queues, acknowledgements, asynchronous
delivery) use ``kiwi_anyio.connect("memory://")`` instead.
"""

from __future__ import annotations

from .communications import CommunicatorHelper

__all__ = ["LocalCommunicator"]


class LocalCommunicator(CommunicatorHelper):
    """Calls subscribers directly, in the sending thread (see ``CommunicatorHelper``)."""

"""pytest fixtures for applications that use kiwi_anyio (installed as a pytest plugin).

* ``kiwi_url``: ``KIWI_ANYIO_URL`` from the environment, else a fresh ``memory://`` broker
  (one per test), so tests run without RabbitMQ and can be pointed at one.
* ``kiwi_communicator``: an async communicator on ``kiwi_url`` (``@pytest.mark.anyio``
  tests), with exchanges and queues of its own (``testing_mode``), closed after the test.
* ``kiwi_blocking_communicator``: the same for synchronous tests (kiwiPy's thread API).
* ``kiwi_app_client``: serves the :class:`~kiwi_anyio.App` of your ``kiwi_app`` fixture on
  ``kiwi_url`` (``App.test_client``) and gives a communicator to send to it with.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

import kiwi_anyio
from kiwi_anyio.blocking import BlockingCommunicator


def private_names(prefix: str = "pytest") -> dict[str, Any]:
    """Communicator options with exchange and queue names no other test uses
    (``testing_mode``: they are cleaned up by the broker)."""
    suffix = uuid.uuid4().hex[:12]
    return {
        "message_exchange": f"{prefix}.messages.{suffix}",
        "task_exchange": f"{prefix}.tasks.{suffix}",
        "task_queue": f"{prefix}.tasks.{suffix}",
        "testing_mode": True,
    }


@pytest.fixture
def kiwi_url() -> str:
    """The broker for the test: ``KIWI_ANYIO_URL``, else a private ``memory://`` broker."""
    return os.environ.get("KIWI_ANYIO_URL") or f"memory://pytest-{uuid.uuid4().hex}"


@pytest.fixture
async def kiwi_communicator(kiwi_url: str) -> AsyncIterator[kiwi_anyio.Communicator]:
    """A connected :class:`~kiwi_anyio.Communicator` with names private to the test."""
    async with kiwi_anyio.connect(kiwi_url, **private_names()) as communicator:
        yield communicator


@pytest.fixture
def kiwi_blocking_communicator(kiwi_url: str) -> Iterator[BlockingCommunicator]:
    """A connected blocking communicator (kiwiPy's thread API) private to the test."""
    with kiwi_anyio.connect(kiwi_url, **private_names()) as communicator:
        yield communicator


@pytest.fixture
def kiwi_app() -> kiwi_anyio.App:
    """The app that ``kiwi_app_client`` serves: define a fixture of this name that returns it."""
    pytest.fail(
        "kiwi_app_client needs a `kiwi_app` fixture that returns your kiwi_anyio.App",
        pytrace=False,
    )


@pytest.fixture
async def kiwi_app_client(
    kiwi_app: kiwi_anyio.App, kiwi_url: str
) -> AsyncIterator[kiwi_anyio.Communicator]:
    """``kiwi_app`` served on ``kiwi_url`` (by default a private ``memory://`` broker), and a
    communicator on the same broker and exchanges to send to it; the app stops gracefully
    after the test."""
    async with kiwi_app.test_client(kiwi_url) as client:
        yield client

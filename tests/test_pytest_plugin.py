"""The pytest plugin kiwi_anyio ships for its users (entry point ``pytest11``)."""

from __future__ import annotations

from typing import Any

import pytest

import kiwi_anyio
from kiwi_anyio.blocking import BlockingCommunicator


@pytest.mark.anyio
async def test_kiwi_communicator_fixture(kiwi_communicator: kiwi_anyio.Communicator) -> None:
    async def double(_comm: Any, n: int) -> int:
        return n * 2

    await kiwi_communicator.add_rpc_subscriber(double, "double")
    assert await (await kiwi_communicator.rpc_send("double", 21)).wait(10) == 42


def test_kiwi_blocking_communicator_fixture(
    kiwi_blocking_communicator: BlockingCommunicator,
) -> None:
    kiwi_blocking_communicator.add_task_subscriber(lambda _c, task: task + 1)
    future = kiwi_blocking_communicator.task_send(1)
    assert future is not None and future.result(10) == 2


def test_kiwi_url_defaults_to_a_private_memory_broker(
    kiwi_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KIWI_ANYIO_URL", raising=False)
    assert kiwi_url.startswith("memory://pytest-") or kiwi_url.startswith("amqp")

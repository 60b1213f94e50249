"""What the communicator declares on real brokers: nothing RabbitMQ 4.3 refuses.

RabbitMQ 4.3 denies queues that are neither durable nor exclusive and global QoS by default.
These tests use every pattern (tasks with replies, RPC, broadcasts; with and without testing
mode) on RabbitMQ 3.10 and on RabbitMQ 4 configured like 4.3, then list the broker's queues
and channels with ``rabbitmqctl`` and check each one.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.to_thread
import pytest

import kiwi_anyio
from kiwi_anyio.testing.rabbitmq import RabbitMQBroker

pytestmark = [pytest.mark.anyio, pytest.mark.broker]


@pytest.fixture(params=["rabbitmq3", "rabbitmq4"])
def any_broker(request: pytest.FixtureRequest) -> RabbitMQBroker:
    """The 3.10 test broker and the RabbitMQ 4 one."""
    name = "broker" if request.param == "rabbitmq3" else "rabbitmq4_broker"
    broker = request.getfixturevalue(name)
    assert isinstance(broker, RabbitMQBroker)
    return broker


def _rows(broker: RabbitMQBroker, *args: str) -> list[list[str]]:
    out = broker.ctl(*args, "--no-table-headers")
    return [line.split("\t") for line in out.splitlines() if line.strip()]


@asynccontextmanager
async def _everything(url: str, testing_mode: bool) -> AsyncIterator[dict[str, Any]]:
    """Two communicators using every pattern; yields their names while they are open."""
    suffix = uuid.uuid4().hex[:10]
    names = {
        "message_exchange": f"props.messages.{suffix}",
        "task_exchange": f"props.tasks.{suffix}",
        "task_queue": f"props.tasks.{suffix}",
        "testing_mode": testing_mode,
    }
    got: list[Any] = []
    async with (
        kiwi_anyio.connect(url, **names) as worker,
        kiwi_anyio.connect(url, **names) as sender,
    ):
        await worker.add_task_subscriber(lambda _c, task: task + 1)
        await worker.add_rpc_subscriber(lambda _c, msg: msg * 2, "double")
        await worker.add_broadcast_subscriber(lambda _c, body, *_: got.append(body))
        future = await sender.task_send(1, timeout=20)
        assert future is not None
        assert await future == 2
        assert await (await sender.rpc_send("double", 4, timeout=20)) == 8
        await sender.broadcast_send("hello")
        while not got:
            await anyio.sleep(0.02)
        yield {"suffix": suffix, "broadcast_queue": worker._broadcast_queue, **names}
    if not testing_mode:  # durable task queues outlive us: remove this test's
        async with (
            kiwi_anyio.protocol.connect(url) as conn,
            conn.channel() as ch,
        ):
            await ch.queue_delete(str(names["task_queue"]))


@pytest.mark.parametrize("testing_mode", [False, True], ids=["durable", "testing_mode"])
async def test_no_transient_non_exclusive_queue_and_no_global_qos(
    any_broker: RabbitMQBroker, testing_mode: bool
) -> None:
    with anyio.fail_after(60):
        async with _everything(any_broker.url, testing_mode) as names:
            queues = await anyio.to_thread.run_sync(
                lambda: _rows(any_broker, "list_queues", "name", "durable", "exclusive")
            )
            # RabbitMQ 4 lists no global prefetch any more (4.3 denies global QoS; ours is
            # configured so): the 3.10 broker shows what we ask for
            version = any_broker.server_version or ""
            columns = ["prefetch_count"]
            if version.startswith("3."):
                columns.append("global_prefetch_count")
            channels = await anyio.to_thread.run_sync(
                lambda: _rows(any_broker, "list_channels", *columns)
            )
    ours = [
        row for row in queues if names["suffix"] in row[0] or row[0] == names["broadcast_queue"]
    ]
    # the task queue, the sender's reply queue, the RPC queue and the broadcast queue
    assert len(ours) == 4, queues
    for name, durable, exclusive in ours:
        if testing_mode and name == names["task_queue"] and version.startswith("3."):
            # kiwiPy's testing-mode task queue, as kiwiPy declares it (RabbitMQ 3.x only)
            assert (durable, exclusive) == ("false", "false")
            continue
        assert durable == "true" or exclusive == "true", (name, durable, exclusive)
    assert channels, "no channel listed"
    for row in channels:
        assert len(row) == len(columns)
        if len(row) == 2:
            assert row[1] == "0", channels  # no channel has a global prefetch limit

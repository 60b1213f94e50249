"""Failover in a three-node RabbitMQ cluster: a quorum task queue loses nothing when the node
the clients are connected to stops in the middle of a stream of tasks.

The cluster (:class:`~kiwi_anyio.testing.rabbitmq.RabbitMQCluster`: three private nodes on
this machine, one cookie, one epmd) boots once for this module (about 15-25 s) and is stopped
whatever happens; both backends use it. A test stops one node; the ``cluster`` fixture starts
it again before the next test.
"""

from __future__ import annotations

import itertools
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import anyio
import pytest

import kiwi_anyio
from kiwi_anyio.testing.rabbitmq import RabbitMQCluster
from tests.proxy import TaskStream

pytestmark = [pytest.mark.anyio, pytest.mark.broker]

#: The node each test stops, in turn (so both backends fail over from a different node).
_victims = itertools.count()


@pytest.fixture(scope="module")
def _cluster() -> Iterator[RabbitMQCluster]:
    cluster = RabbitMQCluster(3)
    cluster.start()  # BrokerStartError (with the nodes' log tails) fails the tests
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def cluster(_cluster: RabbitMQCluster) -> RabbitMQCluster:
    """The module's cluster with every node up (a node a previous test stopped is started)."""
    for index in range(_cluster.size):
        if not _cluster.running(index):
            _cluster.start_node(index)
    return _cluster


def leader_of(cluster: RabbitMQCluster, queue: str) -> tuple[str, str]:
    """The type and the leader node of ``queue``, from rabbitmqctl."""
    for line in cluster.ctl("list_queues", "name", "type", "leader", "--no-table-headers").split(
        "\n"
    ):
        fields = line.split("\t")
        if fields[0] == queue:
            return fields[1], fields[2]
    raise AssertionError(f"queue {queue!r} not found")


async def delete_queue(url: str, queue: str) -> None:
    with anyio.CancelScope(shield=True), anyio.fail_after(30):
        async with kiwi_anyio.protocol.connect(url) as conn, conn.channel() as ch:
            await ch.queue_delete(queue)


async def test_failover_loses_no_task_of_a_quorum_queue(cluster: RabbitMQCluster) -> None:
    """The clients (URL naming all three nodes) are connected to node N, which leads the
    quorum task queue; node N stops mid-stream. Both fail over to another node, every task
    sent is handled, and replies work again."""
    victim = next(_victims) % cluster.size
    url = cluster.url(first=victim)  # node `victim` first: the clients connect to it
    suffix = uuid.uuid4().hex[:10]
    queue_name = f"quorum-{suffix}"
    options: dict[str, Any] = {
        "message_exchange": f"test.messages.{suffix}",
        "task_exchange": f"test.tasks.{suffix}",
        "task_queue": queue_name,
        "queue_type": "quorum",
        "testing_mode": False,
        "reconnect_max_delay": 0.5,
    }
    handled: Counter[int] = Counter()
    events: dict[str, list[str]] = {"sender": [], "worker": []}

    async def worker(_comm: Any, task: Any) -> Any:
        if isinstance(task, int):
            handled[task] += 1
        return task

    with anyio.fail_after(75):
        try:
            async with (
                kiwi_anyio.connect(url, **options) as sender,
                kiwi_anyio.connect(url, task_prefetch_count=100, **options) as work,
            ):
                sender.add_connection_listener(lambda e, _x: events["sender"].append(e))
                work.add_connection_listener(lambda e, _x: events["worker"].append(e))
                await work.add_task_subscriber(worker)
                kind, leader = leader_of(cluster, queue_name)
                assert (kind, leader) == ("quorum", cluster.nodes[victim].node)

                async def send(i: int) -> None:
                    # the overloads promise None; the test checks it at run time
                    assert await sender.task_send(i, no_reply=True) is None  # type: ignore[func-returns-value]

                stream = TaskStream(send, concurrency=100)

                async def stop_node() -> None:
                    await stream.wait_sent(1000)
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(anyio.to_thread.run_sync, cluster.stop_node, victim)
                        while "disconnected" not in events["sender"]:
                            await anyio.sleep(0.005)
                        stream.fault_seen()

                async with anyio.create_task_group() as tg:
                    tg.start_soon(stop_node)
                    tg.start_soon(stream.run)
                assert stream.crossed > 0  # sends were in flight when the node went away
                while set(handled) != stream.sent:  # every task sent is handled
                    await anyio.sleep(0.05)
                assert "recovered" in events["sender"]
                assert "recovered" in events["worker"]
                assert not cluster.running(victim)
                kind, leader = leader_of(cluster, queue_name)
                assert kind == "quorum" and leader != cluster.nodes[victim].node
                # a task with a reply, on the surviving nodes
                future = await sender.task_send("after the failover")
                assert future is not None
                assert await future.wait(20) == "after the failover"
        except BaseException:
            print(cluster.log_tail(40))  # shown by pytest when the test fails
            raise
        finally:
            await delete_queue(cluster.url(first=(victim + 1) % cluster.size), queue_name)
    duplicates = sum(count - 1 for count in handled.values())
    print(
        f"\nnode {victim} stopped: {len(stream.sent)} tasks, {stream.crossed} sent across the "
        f"failover, {duplicates} ran twice"
    )

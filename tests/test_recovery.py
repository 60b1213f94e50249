"""Automatic recovery: cut, stalled and refused links, and a broker restart (bounded)."""

from __future__ import annotations

import uuid
from collections import Counter
from typing import Any
from urllib.parse import urlsplit

import anyio
import pytest

import kiwi_anyio
from kiwi_anyio import ConnectionClosed, DeliveryFailed
from kiwi_anyio.testing.rabbitmq import RabbitMQBroker
from tests.proxy import run_proxy

pytestmark = [pytest.mark.anyio, pytest.mark.broker]


def names() -> dict[str, Any]:
    suffix = uuid.uuid4().hex[:10]
    return {
        "message_exchange": f"test.messages.{suffix}",
        "task_exchange": f"test.tasks.{suffix}",
        "task_queue": f"test.tasks.{suffix}",
        "testing_mode": True,
        "reconnect_max_delay": 0.5,
    }


def connected(comm: kiwi_anyio.Communicator) -> bool:
    return comm.is_connected


def upstream(broker_url: str) -> tuple[str, int]:
    parts = urlsplit(broker_url)
    assert parts.hostname is not None and parts.port is not None
    return parts.hostname, parts.port


async def test_tasks_survive_three_cuts(broker_url: str) -> None:
    """5,000 tasks with replies while the link is cut three times: zero lost."""
    total = 5000
    handled: Counter[int] = Counter()
    events: list[str] = []

    async def worker(_comm: Any, task: int) -> int:
        handled[task] += 1
        return task * 2

    results: dict[int, int] = {}
    with anyio.fail_after(180):
        async with run_proxy(*upstream(broker_url)) as proxy:
            options = names()
            async with (
                kiwi_anyio.connect(proxy.url(), task_prefetch_count=100, **options) as sender,
                kiwi_anyio.connect(proxy.url(), task_prefetch_count=100, **options) as work,
            ):
                sender.add_connection_listener(lambda event, _error: events.append(event))
                await work.add_task_subscriber(worker)
                limiter = anyio.Semaphore(200)

                async def send(i: int) -> None:
                    async with limiter:
                        future = await sender.task_send(i)
                        assert future is not None
                        results[i] = await future

                async def cutter() -> None:
                    for threshold in (total // 5, total // 2, 4 * total // 5):
                        while len(results) < threshold:
                            await anyio.sleep(0.01)
                        await proxy.cut()

                async with anyio.create_task_group() as tg:
                    tg.start_soon(cutter)
                    for i in range(total):
                        tg.start_soon(send, i)
    assert results == {i: i * 2 for i in range(total)}  # every sender got every result
    assert set(handled) == set(range(total))  # nothing lost
    duplicates = sum(count - 1 for count in handled.values())
    print(f"\n{duplicates} of {total} tasks ran twice (at-least-once across 3 cuts)")
    assert events.count("disconnected") >= 3
    assert events.count("recovered") >= 3


async def test_stalled_link_is_detected_and_recovered(broker_url: str) -> None:
    """A link that stops forwarding without closing: the heartbeat finds the dead peer."""
    events: list[str] = []
    with anyio.fail_after(60):
        async with (
            run_proxy(*upstream(broker_url)) as proxy,
            kiwi_anyio.connect(proxy.url(query="heartbeat=1"), **names()) as comm,
        ):
            comm.add_connection_listener(lambda event, _error: events.append(event))
            await comm.add_rpc_subscriber(lambda _c, m: m, "echo")
            assert await (await comm.rpc_send("echo", 1)) == 1
            proxy.stall()
            start = anyio.current_time()
            while "disconnected" not in events:
                await anyio.sleep(0.05)
            detected = anyio.current_time() - start
            assert detected < 5, f"dead peer detected after {detected:.1f} s"
            proxy.resume()
            await proxy.cut()  # the stalled link is dead anyway
            while "recovered" not in events:
                await anyio.sleep(0.05)
            # the RPC subscriber was restored
            assert await (await comm.rpc_send("echo", 2)).wait(10) == 2


async def test_send_while_disconnected_waits_then_fails(broker_url: str) -> None:
    with anyio.fail_after(60):
        async with run_proxy(*upstream(broker_url)) as proxy:
            options = names()
            async with kiwi_anyio.connect(proxy.url(), reconnect_timeout=1.0, **options) as comm:
                await comm.broadcast_send("warm up")
                proxy.refusing = True
                await proxy.cut()
                start = anyio.current_time()
                with pytest.raises((ConnectionClosed, DeliveryFailed)):
                    await comm.broadcast_send("into the void")
                waited = anyio.current_time() - start
                assert 0.5 < waited < 5
                assert not connected(comm)
                proxy.refusing = False
                with anyio.fail_after(20):
                    while not connected(comm):
                        await anyio.sleep(0.05)
                assert await comm.broadcast_send("back") is True


async def test_reply_waits_in_the_queue_while_the_sender_is_away(broker_url: str) -> None:
    """A reply published while the sender's link is down reaches it after recovery."""
    gate = anyio.Event()
    with anyio.fail_after(60):
        async with run_proxy(*upstream(broker_url)) as proxy:
            options = names()
            async with (
                kiwi_anyio.connect(broker_url, **options) as worker,  # not through the proxy
                kiwi_anyio.connect(proxy.url(), **options) as sender,
            ):

                async def slow(_comm: Any, task: Any) -> str:
                    await gate.wait()
                    return f"{task} done"

                await worker.add_task_subscriber(slow)
                future = await sender.task_send("job")
                assert future is not None
                proxy.refusing = True
                await proxy.cut()
                gate.set()  # the reply is published while the sender is disconnected
                await anyio.sleep(0.5)
                proxy.refusing = False
                assert await future.wait(20) == "job done"


async def test_no_recovery_when_turned_off(broker_url: str) -> None:
    with anyio.fail_after(30):
        async with run_proxy(*upstream(broker_url)) as proxy:
            with pytest.raises(ConnectionClosed):  # noqa: PT012
                async with kiwi_anyio.connect(proxy.url(), reconnect=False, **names()) as comm:
                    await comm.broadcast_send("x")
                    await proxy.cut()
                    await anyio.sleep(10)  # cancelled by the connection loss


async def test_broker_restart(broker_url: str, broker: RabbitMQBroker) -> None:
    """The broker restarts: subscribers come back; a reply that cannot survive fails clearly;
    a durable task sent before the restart is still done."""
    options = names()
    options["testing_mode"] = False
    queue_name = f"durable-{uuid.uuid4().hex}"
    events: list[str] = []
    with anyio.fail_after(90):
        async with kiwi_anyio.connect(broker_url, **options) as comm:
            comm.add_connection_listener(lambda event, _error: events.append(event))
            await comm.add_rpc_subscriber(lambda _c, m: m, "echo")
            queue = comm.task_queue(queue_name)
            future = await queue.task_send("survive the restart")
            assert future is not None
            await anyio.to_thread.run_sync(broker.restart)
            with pytest.raises(DeliveryFailed, match="may have been handled"):
                await future.wait(30)
            while "recovered" not in events:
                await anyio.sleep(0.1)
            assert await (await comm.rpc_send("echo", "hi")).wait(20) == "hi"
            async with queue.next_task(timeout=10) as task:
                assert task is not None and task.body == "survive the restart"
                task.process().set_result(None)
            async with kiwi_anyio.protocol.connect(broker_url) as conn, conn.channel() as ch:
                await ch.queue_delete(queue_name)

"""Automatic recovery: cut, stalled and refused links, broker restarts in the middle of a task
stream, and a graceful shutdown under load. Every test is bounded in time."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any
from urllib.parse import urlsplit

import anyio
import pytest

import kiwi_anyio
from kiwi_anyio import ConnectionClosed, DeliveryFailed, Future
from kiwi_anyio.robust.backoff import STABLE_LINK
from kiwi_anyio.robust.backoff import ReconnectBackoff as _ReconnectBackoff
from kiwi_anyio.robust.settling import SETTLE_TIMEOUT
from kiwi_anyio.testing.rabbitmq import RabbitMQBroker
from tests.proxy import TaskStream, run_proxy

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
    """A link that stops forwarding without closing while a task stream is in flight: the
    heartbeat finds the dead peer in about two intervals, the link recovers, the RPC
    subscriber is back and the stream completes with every result."""
    total = 2000
    events: list[str] = []
    handled: Counter[int] = Counter()
    results: dict[int, int] = {}
    detected: list[float] = []

    async def worker(_comm: Any, task: int) -> int:
        handled[task] += 1
        return task * 2

    with anyio.fail_after(90):
        async with run_proxy(*upstream(broker_url)) as proxy:
            url = proxy.url(query="heartbeat=1")
            options = names()
            async with (
                kiwi_anyio.connect(url, task_prefetch_count=100, **options) as comm,
                kiwi_anyio.connect(url, task_prefetch_count=100, **options) as work,
            ):
                comm.add_connection_listener(lambda event, _error: events.append(event))
                await comm.add_rpc_subscriber(lambda _c, m: m, "echo")
                assert await (await comm.rpc_send("echo", 1)).wait(10) == 1
                await work.add_task_subscriber(worker)
                limiter = anyio.Semaphore(200)

                async def send(i: int) -> None:
                    async with limiter:
                        future = await comm.task_send(i)
                        assert future is not None
                        results[i] = await future

                async def staller() -> None:
                    while len(results) < total // 3:
                        await anyio.sleep(0.005)
                    proxy.stall()
                    start = anyio.current_time()
                    while "disconnected" not in events:
                        await anyio.sleep(0.01)
                    detected.append(anyio.current_time() - start)
                    stalled_at = len(results)
                    proxy.resume()
                    await proxy.cut()  # the stalled link is dead anyway
                    assert stalled_at < total, "the stream ended before the stall"

                async with anyio.create_task_group() as tg:
                    tg.start_soon(staller)
                    for i in range(total):
                        tg.start_soon(send, i)
                assert "recovered" in events
                # the RPC subscriber was restored
                assert await (await comm.rpc_send("echo", 2)).wait(10) == 2
    # heartbeat 1 s: the client gives up on a peer silent for 2 s (checked every 0.25 s)
    assert 1.5 < detected[0] < 3.5, f"dead peer detected after {detected[0]:.2f} s"
    assert results == {i: i * 2 for i in range(total)}  # the stream completed
    assert set(handled) == set(range(total))
    print(f"\ndead peer detected after {detected[0]:.2f} s")


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
    """The broker restarts: subscribers come back; a durable task sent before the restart is
    still done, and its reply reaches the sender (the reply queue is durable)."""
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
            while "recovered" not in events:
                await anyio.sleep(0.1)
            assert await (await comm.rpc_send("echo", "hi")).wait(20) == "hi"
            async with queue.next_task(timeout=10) as task:
                assert task is not None and task.body == "survive the restart"
                task.process().set_result("done after the restart")
            assert await future.wait(20) == "done after the restart"
            async with kiwi_anyio.protocol.connect(broker_url) as conn, conn.channel() as ch:
                await ch.queue_delete(queue_name)


@asynccontextmanager
async def queue_policy(broker: RabbitMQBroker, queue: str, definition: str) -> AsyncIterator[None]:
    """A RabbitMQ policy (JSON ``definition``) on ``queue`` for the duration of the block."""
    name = f"policy-{queue}"
    pattern = f"^{queue}$"
    await anyio.to_thread.run_sync(
        lambda: broker.ctl("set_policy", "--apply-to", "queues", name, pattern, definition)
    )
    try:
        yield
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(lambda: broker.ctl("clear_policy", name))


async def delete_queue(url: str, queue: str) -> None:
    """Delete a durable queue a test made (shielded: also when the test failed)."""
    with anyio.CancelScope(shield=True), anyio.fail_after(30):
        async with kiwi_anyio.protocol.connect(url) as conn, conn.channel() as ch:
            await ch.queue_delete(queue)


async def test_broker_restart_mid_stream(broker_url: str, broker: RabbitMQBroker) -> None:
    """The broker restarts in the middle of a stream of tasks to a durable queue: every task
    sent is handled (none lost), and the RPC and broadcast subscribers work again.

    Most tasks are sent without reply; every 50th wants one: its future gives the result, or,
    if the reply was lost with the reply queue in the restart, fails with DeliveryFailed
    ("may have been handled"), and the worker's record shows the task was handled.
    """
    options = names()
    options["testing_mode"] = False
    suffix = uuid.uuid4().hex[:10]
    queue_name = f"durable-{suffix}"
    handled: Counter[int] = Counter()
    events: dict[str, list[str]] = {"sender": [], "worker": []}
    broadcasts: list[Any] = []
    futures: dict[int, Future[Any]] = {}
    replies: dict[int, Any] = {}

    async def worker(_comm: Any, task: int) -> int:
        handled[task] += 1
        return task * 2

    with anyio.fail_after(120):
        try:
            async with (
                kiwi_anyio.connect(broker_url, **options) as sender,
                kiwi_anyio.connect(broker_url, task_prefetch_count=100, **options) as work,
            ):
                sender.add_connection_listener(lambda e, _x: events["sender"].append(e))
                work.add_connection_listener(lambda e, _x: events["worker"].append(e))
                await work.add_rpc_subscriber(lambda _c, m: m, f"echo-{suffix}")
                await work.add_broadcast_subscriber(lambda _c, body, *_: broadcasts.append(body))
                await work.task_queue(queue_name).add_task_subscriber(worker)
                queue = sender.task_queue(queue_name)

                async def send(i: int) -> None:
                    if i % 50:
                        # the overloads promise None; the test checks it at run time
                        assert await queue.task_send(i, no_reply=True) is None  # type: ignore[func-returns-value]
                    else:
                        future = await queue.task_send(i)
                        assert future is not None
                        futures[i] = future

                stream = TaskStream(send, concurrency=100)

                async def restart() -> None:
                    await stream.wait_sent(1000)
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(anyio.to_thread.run_sync, broker.restart)
                        while "disconnected" not in events["sender"]:
                            await anyio.sleep(0.005)
                        stream.fault_seen()

                async with anyio.create_task_group() as tg:
                    tg.start_soon(restart)
                    tg.start_soon(stream.run)
                assert stream.crossed > 0  # sends were in flight when the broker went away
                while set(handled) != stream.sent:  # every confirmed task is handled
                    await anyio.sleep(0.05)
                assert "recovered" in events["sender"]
                assert "recovered" in events["worker"]
                for i, future in futures.items():
                    try:
                        replies[i] = await future.wait(30)
                    except DeliveryFailed as exc:  # the reply queue was lost in the restart
                        replies[i] = exc
                # the subscribers came back without anything done by the user
                reply = await sender.rpc_send(f"echo-{suffix}", "after the restart")
                assert await reply.wait(20) == "after the restart"
                await sender.broadcast_send("after the restart")
                while "after the restart" not in broadcasts:
                    await anyio.sleep(0.05)
        finally:
            await delete_queue(broker_url, queue_name)
    for i, result in replies.items():
        if isinstance(result, DeliveryFailed):
            assert "may have been handled" in str(result)
        else:
            assert result == i * 2
    duplicates = sum(count - 1 for count in handled.values())
    lost = sum(isinstance(result, DeliveryFailed) for result in replies.values())
    print(
        f"\n{len(stream.sent)} tasks, {stream.crossed} sent across the restart, {duplicates} "
        f"ran twice; {lost} of {len(replies)} replies lost"
    )


async def test_graceful_shutdown_under_load(broker_url: str) -> None:
    """Leaving ``async with`` while 100 tasks are in flight in a worker: the finished ones
    are answered, the others are requeued and done by a second worker; each task is done
    exactly once."""
    total = 100
    options = names()
    started: Counter[int] = Counter()
    done: Counter[int] = Counter()
    done_by: dict[str, set[int]] = {"first": set(), "second": set()}

    def subscriber(name: str) -> Any:
        async def work(_comm: Any, task: int) -> int:
            started[task] += 1
            # 0.3 s ... 0.7 s: about one task finishes every 4 ms, so some may be settling
            # (their reply being sent and confirmed) when the worker leaves
            await anyio.sleep(0.3 + 0.004 * task)
            done[task] += 1  # ran to completion (a cancelled call never gets here)
            done_by[name].add(task)
            return task * 2

        return work

    with anyio.fail_after(60):
        async with kiwi_anyio.connect(broker_url, **options) as sender:
            futures = []
            async with kiwi_anyio.connect(broker_url, task_prefetch_count=100, **options) as first:
                await first.add_task_subscriber(subscriber("first"))
                for i in range(total):
                    future = await sender.task_send(i)
                    assert future is not None
                    futures.append(future)
                while len(started) < total:  # all 100 in flight at once
                    await anyio.sleep(0.01)
                while len(done) < total // 2:
                    await anyio.sleep(0.001)
            # the first worker has left: what it finished was answered
            finished_first = set(done_by["first"])
            assert 0 < len(finished_first) < total
            for i in sorted(finished_first):
                assert await futures[i].wait(10) == i * 2
            unfinished = [f for f in futures if not f.done()]
            assert len(unfinished) == total - len(finished_first)
            async with kiwi_anyio.connect(broker_url, task_prefetch_count=100, **options) as second:
                await second.add_task_subscriber(subscriber("second"))
                results = [await future.wait(30) for future in futures]
    assert results == [i * 2 for i in range(total)]
    assert done == Counter(range(total)), "a task was done twice or never"
    assert done_by["first"] == finished_first  # nothing finished after the first one left
    assert done_by["second"] == set(range(total)) - finished_first
    print(f"\nfirst worker finished {len(finished_first)}, the second {len(done_by['second'])}")


async def test_task_send_in_flight_across_broker_restart(
    broker_url: str, broker: RabbitMQBroker
) -> None:
    """Tasks (and a few broadcasts) being sent while the broker restarts, before any worker is
    back: each send ends confirmed and every task is in the durable queue afterwards.

    The restart deletes the (non-durable) task and message exchanges and the task queue's
    binding; a message sent again after the recovery needs them declared again (not a 404).
    """
    options = names()
    options["testing_mode"] = False
    queue_name = f"durable-{uuid.uuid4().hex[:10]}"
    events: list[str] = []
    received: Counter[int] = Counter()

    async def worker(_comm: Any, task: int) -> None:
        received[task] += 1

    with anyio.fail_after(90):
        try:
            async with kiwi_anyio.connect(broker_url, **options) as sender:
                sender.add_connection_listener(lambda event, _error: events.append(event))
                queue = sender.task_queue(queue_name)

                async def send(i: int) -> None:
                    if i % 10 == 0:
                        assert await sender.broadcast_send(i) is True
                    else:
                        # the overloads promise None; the test checks it at run time
                        assert await queue.task_send(i, no_reply=True) is None  # type: ignore[func-returns-value]

                stream = TaskStream(send, concurrency=50)

                async def restart() -> None:
                    await stream.wait_sent(200)
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(anyio.to_thread.run_sync, broker.restart)
                        while "disconnected" not in events:
                            await anyio.sleep(0.005)
                        stream.fault_seen()

                async with anyio.create_task_group() as tg:
                    tg.start_soon(restart)
                    tg.start_soon(partial(stream.run, after_fault=100))
                assert stream.crossed > 0
                await queue.add_task_subscriber(worker)  # only now: nobody consumed meanwhile
                while set(received) != {i for i in stream.sent if i % 10}:
                    await anyio.sleep(0.05)
        finally:
            await delete_queue(broker_url, queue_name)


async def test_nacked_task_send_fails_with_delivery_failed(
    broker_url: str, broker: RabbitMQBroker
) -> None:
    """A publish the broker keeps nacking (here: a full queue with ``overflow =
    reject-publish``) is sent again for ``nack_retry_timeout`` seconds (a quorum queue nacks
    while it elects a leader), then fails with DeliveryFailed, the documented error of
    ``task_send``, not with the protocol's PublishNacked; the communicator goes on."""
    options = {**names(), "nack_retry_timeout": 1.0}
    queue_name = f"full-{uuid.uuid4().hex[:10]}"
    async with queue_policy(broker, queue_name, '{"max-length": 0, "overflow": "reject-publish"}'):
        with anyio.fail_after(60):
            async with kiwi_anyio.connect(broker_url, **options) as sender:
                queue = sender.task_queue(queue_name)
                start = anyio.current_time()
                with pytest.raises(DeliveryFailed, match="nack"):
                    await queue.task_send("no room", no_reply=True)
                assert anyio.current_time() - start >= 1.0
                assert sender.is_connected  # the communicator goes on
                assert await sender.broadcast_send("still here") is True


def test_reconnect_backoff_starts_at_once_then_doubles_up_to_the_maximum() -> None:
    """After a loss the first reconnection attempt comes within 50 ms (a blip should cost
    milliseconds, not the backoff); later ones back off, jittered, never past the maximum."""
    for _ in range(200):
        backoff = _ReconnectBackoff(2.0)
        backoff.lost(100.0)
        delays = [backoff.next_delay() for _ in range(30)]
        assert 0.0 <= delays[0] <= 0.05
        assert 0.125 <= delays[1] <= 0.25
        assert 0.25 <= delays[2] <= 0.5
        assert all(1.0 <= d <= 2.0 for d in delays[5:])
    no_backoff = _ReconnectBackoff(0.0)
    assert {no_backoff.next_delay() for _ in range(10)} == {0.0}


def test_a_link_that_keeps_dropping_at_once_is_retried_with_backoff() -> None:
    """A broker (or proxy) that closes every new connection right after the handshake is
    not hammered: the backoff carries over links shorter than STABLE_LINK, and starts
    afresh after a link that stayed up."""
    backoff = _ReconnectBackoff(30.0)
    now = 0.0
    delays = []
    for _ in range(6):  # up, dropped 0.1 s later, reconnect ...
        backoff.connected(now)
        now += 0.1
        backoff.lost(now)
        delays.append(backoff.next_delay())
        now += delays[-1]
    assert delays[0] <= 0.05
    assert all(later >= 0.125 for later in delays[1:])
    assert delays[-1] >= 2.0  # 0.25 * 2**4, jittered down by at most half
    backoff.connected(now)
    backoff.lost(now + STABLE_LINK)
    assert backoff.next_delay() <= 0.05


async def test_removing_a_subscriber_while_the_broker_blocks_publishing_is_bounded(
    broker_url: str, broker: RabbitMQBroker
) -> None:
    """A worker finishes while RabbitMQ blocks publishers (a memory alarm): its reply cannot
    go out, yet removing the subscriber returns within SETTLE_TIMEOUT instead of waiting for
    the alarm to clear; the task is not acknowledged, so it is not lost."""
    options = names()
    queue_name = f"blocked-{uuid.uuid4().hex[:10]}"
    started = anyio.Event()
    release = anyio.Event()

    async def worker(_comm: Any, task: str) -> str:
        started.set()
        await release.wait()
        return task

    def alarm(on: bool) -> None:
        broker.ctl("set_vm_memory_high_watermark", "0" if on else "0.4")

    try:
        with anyio.fail_after(60):
            async with (
                kiwi_anyio.connect(broker_url, **options) as sender,
                kiwi_anyio.connect(broker_url, **options) as worker_comm,
            ):
                queue = worker_comm.task_queue(queue_name)
                identifier = await queue.add_task_subscriber(worker)
                future = await sender.task_queue(queue_name).task_send("work")
                assert future is not None
                await started.wait()
                await anyio.to_thread.run_sync(alarm, True)
                try:
                    release.set()
                    await anyio.sleep(0.2)  # the reply is stuck behind the alarm
                    start = anyio.current_time()
                    await queue.remove_task_subscriber(identifier)
                    assert anyio.current_time() - start < SETTLE_TIMEOUT + 2
                finally:
                    with anyio.CancelScope(shield=True):
                        await anyio.to_thread.run_sync(alarm, False)
                # not lost: the stuck reply goes out now, or the task (never acknowledged)
                # is handled again by the next worker
                await queue.add_task_subscriber(worker)
                assert await future.wait(20) == "work"
    finally:
        with anyio.CancelScope(shield=True):
            await delete_queue(broker_url, queue_name)


async def test_a_nacked_task_is_sent_again_until_the_broker_takes_it(
    broker_url: str, broker: RabbitMQBroker
) -> None:
    """A nack is often transient (a quorum queue electing a leader during a fail-over): the
    send is repeated, and succeeds once the broker takes the task (here: once a full queue
    with ``overflow = reject-publish`` has room again)."""
    options = names()
    queue_name = f"one-{uuid.uuid4().hex[:10]}"
    policy = '{"max-length": 1, "overflow": "reject-publish"}'
    try:
        with anyio.fail_after(60):
            async with (
                queue_policy(broker, queue_name, policy),
                kiwi_anyio.connect(broker_url, **options) as comm,
            ):
                queue = comm.task_queue(queue_name)
                await queue.task_send("first", no_reply=True)  # the queue is full now
                taken: list[str] = []

                async def make_room() -> None:
                    await anyio.sleep(0.5)
                    async with queue.next_task(timeout=5) as task:
                        assert task is not None
                        taken.append(task.body)
                        task.process().set_result(None)

                async with anyio.create_task_group() as tg:
                    tg.start_soon(make_room)
                    await queue.task_send("second", no_reply=True)  # nacked, then taken
                async with queue.next_task(timeout=5) as task:
                    assert task is not None
                    taken.append(task.body)
                    task.process().set_result(None)
                assert taken == ["first", "second"]
    finally:
        await delete_queue(broker_url, queue_name)

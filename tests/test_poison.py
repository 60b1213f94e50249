"""Poison tasks and retries (issue #15): bounded redelivery, dead letters, Retry(delay).

A poison task kills its worker (``os._exit``) every time; workers are restarted in a loop.
It must end in the queue's dead-letter queue after exactly ``max_deliveries`` deliveries,
its sender must get :class:`~kiwi_anyio.TaskDeadLettered`, and every other task of the
stream must be answered.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest

import kiwi_anyio
from kiwi_anyio import RemoteException, Retry, TaskDeadLettered
from kiwi_anyio.testing.pytest_plugin import private_names

pytestmark = pytest.mark.anyio

WORKER = Path(__file__).with_name("poison_worker.py")


async def delete_queues(url: str, *queues: str) -> None:
    with anyio.CancelScope(shield=True), anyio.fail_after(30):
        async with kiwi_anyio.protocol.connect(url) as conn, conn.channel() as ch:
            for queue in queues:
                await ch.queue_delete(queue)


@pytest.mark.parametrize("queue_type", [None, "quorum"], ids=["classic", "quorum"])
async def test_a_poison_task_is_dead_lettered_after_max_deliveries(
    broker_url: str, anyio_backend: str, tmp_path: Path, queue_type: str | None
) -> None:
    queue = f"poison-{uuid.uuid4().hex[:10]}"
    log = tmp_path / "poison.log"
    total = 1000
    restarts = 0
    stop = anyio.Event()

    async def workers() -> None:
        # one worker at a time, restarted whenever it dies (as a supervisor would)
        nonlocal restarts
        args = [sys.executable, str(WORKER), broker_url, queue, str(log), anyio_backend]
        if queue_type:
            args.append(queue_type)
        while not stop.is_set():
            async with await anyio.open_process(args, stdout=subprocess.DEVNULL) as proc:
                with anyio.CancelScope() as scope:

                    async def watch(scope: anyio.CancelScope = scope) -> None:
                        await stop.wait()
                        scope.cancel()

                    async with anyio.create_task_group() as tg:
                        tg.start_soon(watch)
                        await proc.wait()
                        tg.cancel_scope.cancel()
                if proc.returncode is None:
                    proc.terminate()
                    with anyio.move_on_after(10):
                        await proc.wait()
                    if proc.returncode is None:
                        proc.kill()
                else:
                    restarts += 1

    options: dict[str, Any] = {"testing_mode": False}
    if queue_type:
        options["queue_type"] = queue_type
    results: dict[int, Any] = {}
    try:
        with anyio.fail_after(150):
            async with (
                kiwi_anyio.connect(broker_url, **options) as sender,
                anyio.create_task_group() as tg,
            ):
                tasks = sender.task_queue(queue, max_deliveries=3)
                await tasks._ensure_declared()
                tg.start_soon(workers)
                poison = await tasks.task_send("poison")
                futures = {i: await tasks.task_send(i) for i in range(total)}
                with pytest.raises(TaskDeadLettered, match=r"after 3 deliveries") as info:
                    await poison
                assert isinstance(info.value, RemoteException)
                for i, future in futures.items():
                    results[i] = await future
                stop.set()
                dead = await tasks.dead_letters()
                assert [d.task for d in dead] == ["poison"]
                assert dead[0].deliveries == 3 and "without an answer" in dead[0].reason
                assert await tasks.purge_dead_letters() == 1
                assert await tasks.dead_letters() == []
    finally:
        await delete_queues(broker_url, queue, f"{queue}.dead-letters")
    assert log.read_text().count("poison") == 3  # delivered to a subscriber exactly 3 times
    assert restarts == 3
    assert results == {i: i * 2 for i in range(total)}  # every other task answered


@pytest.fixture(params=["rabbitmq", "memory"])
def url(request: pytest.FixtureRequest) -> str:
    if request.param == "memory":
        return f"memory://test-{uuid.uuid4().hex}"
    return str(request.getfixturevalue("broker_url"))


async def test_retry_with_a_delay_then_success(url: str) -> None:
    calls: list[float] = []

    async def flaky(_comm: Any, task: str) -> str:
        calls.append(time.monotonic())
        if len(calls) <= 3:
            raise Retry("not yet", delay=0.5)
        return f"done {task}"

    with anyio.fail_after(30):
        async with kiwi_anyio.connect(url, **private_names("retry")) as comm:
            await comm.add_task_subscriber(flaky)
            start = time.monotonic()
            future = await comm.task_send("it")
            assert await future == "done it"
            elapsed = time.monotonic() - start
            await anyio.sleep(0.3)  # nothing more arrives: it ran once after its retries
    assert len(calls) == 4
    assert 1.4 <= elapsed < 10, elapsed
    gaps = [b - a for a, b in itertools.pairwise(calls)]
    assert all(gap >= 0.45 for gap in gaps), gaps


async def test_retries_past_max_deliveries_are_dead_lettered(url: str) -> None:
    calls = 0

    async def always(_comm: Any, _task: Any) -> None:
        nonlocal calls
        calls += 1
        raise Retry("never", delay=0)

    with anyio.fail_after(30):
        async with kiwi_anyio.connect(url, **private_names("retry")) as comm:
            queue = comm.task_queue(f"retry-{uuid.uuid4().hex[:8]}", max_deliveries=4)
            await queue.add_task_subscriber(always)
            future = await queue.task_send("x")
            with pytest.raises(TaskDeadLettered, match="retried 4 times: never"):
                await future
            assert calls == 4
            [dead] = await queue.dead_letters()
            assert dead.task == "x" and dead.deliveries == 4
            # requeued, it is tried again from a count of zero
            assert await queue.requeue_dead_letters() == 1
            with anyio.move_on_after(5):
                while calls < 8:
                    await anyio.sleep(0.02)
            assert calls == 8
            await queue.purge_dead_letters()


async def test_rejection_does_not_count_as_a_delivery(url: str) -> None:
    """Every subscriber rejecting a task requeues it without counting it."""
    seen = 0

    async def picky(_comm: Any, task: Any) -> Any:
        nonlocal seen
        seen += 1
        if seen <= 3:
            raise kiwi_anyio.TaskRejected("not now")
        return task

    with anyio.fail_after(30):
        async with kiwi_anyio.connect(url, **private_names("reject")) as comm:
            queue = comm.task_queue(f"reject-{uuid.uuid4().hex[:8]}", max_deliveries=2)
            await queue.add_task_subscriber(picky)
            assert await (await queue.task_send("kept")) == "kept"
    assert seen == 4


@pytest.fixture(params=["rabbitmq3", "rabbitmq4"])
def any_broker(request: pytest.FixtureRequest) -> Any:
    """The 3.10 test broker and the RabbitMQ 4 one."""
    return request.getfixturevalue("broker" if request.param == "rabbitmq3" else "rabbitmq4_broker")


async def test_consumer_timeout_is_asked_for_where_the_broker_honours_it(any_broker: Any) -> None:
    """``consumer_timeout=`` becomes the consumer's ``x-consumer-timeout`` on RabbitMQ 3.12+
    (the 4.0 broker here) and is left out on older brokers (3.10), which refuse nothing but
    would ignore it."""
    queue_name = f"long-{uuid.uuid4().hex[:10]}"
    with anyio.fail_after(60):
        async with kiwi_anyio.connect(any_broker.url, **private_names("long")) as comm:
            queue = comm.task_queue(queue_name, consumer_timeout=3600)
            await queue.add_task_subscriber(lambda _c, task: task)
            assert await (await queue.task_send(1)) == 1
            rows = await anyio.to_thread.run_sync(
                lambda: any_broker.ctl("list_consumers", "queue_name", "arguments")
            )
    ours = [line for line in rows.splitlines() if line.startswith(queue_name)]
    assert len(ours) == 1, rows
    version = any_broker.server_version or ""
    if version.startswith("3.10"):
        assert "x-consumer-timeout" not in ours[0]
    else:
        assert "x-consumer-timeout" in ours[0] and "3600000" in ours[0], ours[0]


def test_an_acknowledgement_timeout_is_recognised() -> None:
    from kiwi_anyio.exceptions import ChannelClosed
    from kiwi_anyio.patterns.tasks import consumer_timeout_supported
    from kiwi_anyio.robust.consumer import is_ack_timeout

    closed = ChannelClosed(
        406,
        "PRECONDITION_FAILED - delivery acknowledgement on channel 1 timed out. Timeout "
        "value used: 1800000 ms. This timeout value can be configured, see consumers doc "
        "guide to learn more",
    )
    assert is_ack_timeout(closed)
    assert not is_ack_timeout(ChannelClosed(406, "PRECONDITION_FAILED - unknown delivery tag 3"))
    assert consumer_timeout_supported({"product": "RabbitMQ", "version": "3.12.1"})
    assert consumer_timeout_supported({"product": "RabbitMQ", "version": "4.0.5"})
    assert not consumer_timeout_supported({"product": "RabbitMQ", "version": "3.10.8"})
    assert not consumer_timeout_supported({"product": "kiwi_anyio memory broker"})


def _cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kiwi_anyio", "--url", url, *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_dead_letters_from_the_command_line(broker_url: str) -> None:
    queue_name = f"dead-{uuid.uuid4().hex[:10]}"
    options = private_names("dead")
    options["testing_mode"] = False

    async def give_up(_comm: Any, _task: Any) -> None:
        raise Retry("no", delay=0)

    try:
        with anyio.fail_after(60):
            async with kiwi_anyio.connect(broker_url, **options) as comm:
                queue = comm.task_queue(queue_name, max_deliveries=1)
                async with queue.task_subscriber(give_up):
                    for body in ("first", "second"):
                        with pytest.raises(TaskDeadLettered):
                            await (await queue.task_send(body))
            task_args = ("task", "dead-letters", "--queue", queue_name)
            listed = await anyio.to_thread.run_sync(lambda: _cli(broker_url, *task_args))
            assert listed.returncode == 0, listed.stderr
            assert "'first'" in listed.stdout and "'second'" in listed.stdout
            assert "2 dead letters" in listed.stderr
            requeued = await anyio.to_thread.run_sync(
                lambda: _cli(broker_url, *task_args, "--requeue")
            )
            assert requeued.returncode == 0 and "requeued 2" in requeued.stdout, requeued
            async with kiwi_anyio.connect(broker_url, **options) as comm:
                queue = comm.task_queue(queue_name)
                assert await queue.dead_letters() == []
                back = []
                for _ in range(2):
                    async with queue.next_task(timeout=10) as task:  # back in the task queue
                        assert task is not None
                        back.append(task.body)
                        task.process().set_result(None)
                assert sorted(back) == ["first", "second"]
                # set aside again, then purged
                async with queue.task_subscriber(give_up):
                    with pytest.raises(TaskDeadLettered):
                        await (await queue.task_send("third"))
            purged = await anyio.to_thread.run_sync(
                lambda: _cli(broker_url, *task_args, "--purge", "--jsonl")
            )
            assert purged.returncode == 0 and '"purged": 1' in purged.stdout, purged
    finally:
        await delete_queues(broker_url, queue_name, f"{queue_name}.dead-letters")

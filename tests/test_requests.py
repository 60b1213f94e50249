"""Every request ends: timeouts, requests known lost, and ids that cannot be confused.

The communicator tests run on RabbitMQ and on memory://, on asyncio and trio.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import anyio
import anyio.lowlevel
import anyio.to_thread
import pytest

import kiwi_anyio
from kiwi_anyio import RequestLost, RequestTimeout, UnroutableError
from kiwi_anyio._pending import PendingReplies
from kiwi_anyio.patterns.requests import RequestIds as _RequestIds
from kiwi_anyio.patterns.tasks import transient_queues_permitted as _transient_queues_permitted
from kiwi_anyio.testing.pytest_plugin import private_names
from kiwi_anyio.testing.rabbitmq import RabbitMQBroker

from .proxy import run_proxy

pytestmark = pytest.mark.anyio

TIMEOUT = 20


@pytest.fixture(params=["rabbitmq", "memory"])
def url(request: pytest.FixtureRequest) -> str:
    if request.param == "memory":
        return f"memory://test-{uuid.uuid4().hex}"
    return str(request.getfixturevalue("broker_url"))


@pytest.fixture
async def comm(url: str) -> AsyncIterator[kiwi_anyio.Communicator]:
    async with kiwi_anyio.connect(url, **private_names("req")) as communicator:
        yield communicator


async def test_an_rpc_with_a_timeout_to_a_slow_server_fails_in_time(
    comm: kiwi_anyio.Communicator,
) -> None:
    release = anyio.Event()

    async def slow(_comm: Any, msg: Any) -> Any:
        await release.wait()
        return msg

    with anyio.fail_after(TIMEOUT):
        await comm.add_rpc_subscriber(slow, "slow")
        start = time.monotonic()
        future = await comm.rpc_send("slow", 1, timeout=0.5)
        with pytest.raises(RequestTimeout, match=r"RPC to 'slow'.*0\.5 s"):
            await future
        elapsed = time.monotonic() - start
        assert 0.45 <= elapsed < 3.0
        assert isinstance(future.exception(), TimeoutError)  # also the builtin
        assert len(comm._pending) == 0  # nothing left waiting
        release.set()
        # the late reply is dropped and the communicator goes on
        assert await (await comm.rpc_send("slow", 2, timeout=10)) == 2


async def test_the_communicators_request_timeout_is_the_default(url: str) -> None:
    with anyio.fail_after(TIMEOUT):
        async with kiwi_anyio.connect(url, request_timeout=0.3, **private_names("req")) as comm:
            future = await comm.task_send("nobody works here")  # no worker
            assert future is not None
            with pytest.raises(RequestTimeout):
                await future
            # an explicit None waits for ever; an explicit number wins over the default
            forever = await comm.task_send("still nobody", timeout=None)
            assert forever is not None
            with anyio.move_on_after(0.6):
                await forever.wait(0.6)
            assert not forever.done()
            forever.cancel()
            assert len(comm._pending) == 0
            await comm.add_task_subscriber(lambda _c, task: task)
            # the queued tasks are still done (a timeout ends the wait, not the task)
            quick = await comm.task_send("answered", timeout=10)
            assert quick is not None
            assert await quick == "answered"


async def test_pending_replies_deadlines_and_risk() -> None:
    pending = PendingReplies()
    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(pending.run)
            timed = pending.add("a", "call a", 0.2)
            rpc = pending.add("b", "call b", None)
            task = pending.add("c", "task c", None, durable=True)
            answered = pending.add("d", "call d", 0.1)
            popped = pending.pop("d")
            assert popped is answered
            answered.set_result(1)
            assert pending.at_risk(0.3, "a test", durable=False) == 2  # a and b, not c
            with pytest.raises(RequestTimeout, match=r"call a within 0\.2 s"):
                await timed  # its own deadline came first
            with pytest.raises(RequestLost, match=r"call b may have been handled.*a test"):
                await rpc
            assert not task.done() and "c" in pending
            assert pending.at_risk(0.05, "the queue was lost", durable=True) == 1
            with pytest.raises(RequestLost):
                await task
            assert len(pending) == 0
            cancelled = pending.add("e", "call e", 5)
            cancelled.cancel()
            assert "e" not in pending
            tg.cancel_scope.cancel()


async def test_pending_replies_keep_the_heap_small() -> None:
    pending = PendingReplies()
    for i in range(5000):
        future = pending.add(str(i), "call", 60)
        assert pending.pop(str(i)) is future
    assert len(pending) == 0
    assert len(pending._heap) <= 1024 + 2


def test_request_ids_differ_in_at_least_two_hex_digits() -> None:
    ids = _RequestIds()
    issued = [ids.next_hex() for _ in range(3000)]
    assert len(set(issued)) == len(issued)
    assert all(len(i) == 32 for i in issued)
    issued_set = set(issued)
    for request_id in issued[:300]:
        for pos, digit in itertools.product(range(32), "0123456789abcdef"):
            if request_id[pos] != digit:
                changed = request_id[:pos] + digit + request_id[pos + 1 :]
                assert changed not in issued_set, (request_id, changed)


def test_transient_queues_are_declared_only_on_rabbitmq_3() -> None:
    assert _transient_queues_permitted({"product": "RabbitMQ", "version": "3.10.8"})
    assert _transient_queues_permitted({"product": b"RabbitMQ", "version": b"3.13.7"})
    assert not _transient_queues_permitted({"product": "RabbitMQ", "version": "4.0.5"})
    assert not _transient_queues_permitted({"product": "RabbitMQ", "version": "4.3.0"})
    assert not _transient_queues_permitted({"product": "kiwi_anyio memory broker"})
    assert not _transient_queues_permitted({})


# ---------------------------------------------------------------- against a real broker


def _upstream(broker_url: str) -> tuple[str, int]:
    parts = urlsplit(broker_url)
    assert parts.hostname is not None and parts.port is not None
    return parts.hostname, parts.port


def _names() -> dict[str, Any]:
    options = private_names("req")
    options["reconnect_max_delay"] = 0.5
    return options


async def test_rpc_calls_survive_three_stalls_of_the_servers_link(broker_url: str) -> None:
    """The RPC server's link stalls three times under load (heartbeat 1 s): its queue
    outlives the link, so every call gets its result, within the stall plus recovery."""
    events: list[str] = []
    results: dict[int, Any] = {}
    per_round = 100

    async def echo(_comm: Any, msg: int) -> int:
        await anyio.sleep(0.01)
        return msg

    with anyio.fail_after(120):
        async with run_proxy(*_upstream(broker_url)) as proxy:
            options = _names()
            async with (
                kiwi_anyio.connect(broker_url, **options) as client,
                kiwi_anyio.connect(proxy.url(query="heartbeat=1"), **options) as server,
            ):
                server.add_connection_listener(lambda event, _error: events.append(event))
                await server.add_rpc_subscriber(echo, "echo")

                async def call(i: int) -> None:
                    future = await client.rpc_send("echo", i, timeout=40)
                    try:
                        results[i] = await future
                    except (RequestTimeout, RequestLost) as exc:
                        results[i] = exc

                for round_ in range(3):
                    recovered = events.count("recovered")
                    async with anyio.create_task_group() as tg:
                        for i in range(round_ * per_round, (round_ + 1) * per_round):
                            tg.start_soon(call, i)
                        await anyio.sleep(0.05)  # calls in flight, and in the queue
                        proxy.stall()
                        while events.count("disconnected") <= round_:
                            await anyio.sleep(0.01)
                        proxy.resume()
                        await proxy.cut()  # the stalled link is dead anyway
                    while events.count("recovered") == recovered:
                        await anyio.sleep(0.05)
    assert results == {i: i for i in range(3 * per_round)}


async def test_a_deleted_task_queue_is_declared_again_by_its_worker(
    broker_url: str, broker: RabbitMQBroker
) -> None:
    """An operator deletes a task queue while a worker serves it: the running handler's
    sender gets its result, tasks that waited in the queue end with a timeout (they are
    gone), sends in between are unroutable, and the worker declares the queue again and
    serves new tasks without outside help."""
    options = _names()
    queue_name = options["task_queue"]
    started = anyio.Event()
    release = anyio.Event()

    async def worker(_comm: Any, task: str) -> str:
        if task == "running":
            started.set()
            await release.wait()
        return f"done {task}"

    with anyio.fail_after(60):
        async with (
            kiwi_anyio.connect(broker_url, request_timeout=8, **options) as sender,
            kiwi_anyio.connect(broker_url, **options) as work,
        ):
            await work.add_task_subscriber(worker)  # prefetch 1: one task at a time
            running = await sender.task_send("running")
            await started.wait()
            waiting = [await sender.task_send(f"waiting {i}") for i in range(3)]
            await anyio.to_thread.run_sync(broker.ctl, "delete_queue", queue_name)
            release.set()
            assert running is not None and await running == "done running"
            for future in waiting:  # deleted with the queue: the default timeout ends them
                assert future is not None
                with pytest.raises(RequestTimeout):
                    await future
            unroutable = 0
            messages: list[str] = []
            while True:  # until the worker has declared its queue again
                try:
                    future = await sender.task_send("after", timeout=5)
                except UnroutableError as exc:
                    messages.append(str(exc))
                    unroutable += 1
                    await anyio.sleep(0.1)
                    continue
                assert future is not None
                assert await future == "done after"
                break
            assert all(queue_name in message for message in messages)
            print(f"\n{unroutable} sends were unroutable while the queue was gone")


async def test_a_deleted_rpc_queue_is_declared_again_by_its_server(
    broker_url: str, broker: RabbitMQBroker
) -> None:
    options = _names()
    with anyio.fail_after(60):
        async with (
            kiwi_anyio.connect(broker_url, **options) as client,
            kiwi_anyio.connect(broker_url, **options) as server,
        ):
            await server.add_rpc_subscriber(lambda _c, m: m, "svc")
            assert await (await client.rpc_send("svc", 1, timeout=10)) == 1
            queue = f"{options['message_exchange']}.rpc.svc"
            await anyio.to_thread.run_sync(broker.ctl, "delete_queue", queue)
            while True:
                try:
                    future = await client.rpc_send("svc", 2, timeout=5)
                except UnroutableError:
                    await anyio.sleep(0.1)
                    continue
                assert await future == 2
                break


async def test_an_rpc_server_that_closed_is_unroutable_at_once(broker_url: str) -> None:
    """RPC queues are durable now: closing the communicator deletes them, so a call to a
    server that has gone is refused, not left waiting in a queue nobody consumes."""
    options = _names()
    with anyio.fail_after(30):
        async with kiwi_anyio.connect(broker_url, **options) as client:
            async with kiwi_anyio.connect(broker_url, **options) as server:
                await server.add_rpc_subscriber(lambda _c, m: m, "gone")
                assert await (await client.rpc_send("gone", 1, timeout=10)) == 1
            with pytest.raises(UnroutableError):
                await client.rpc_send("gone", 2)


async def test_a_plain_function_subscriber_touching_the_loop_gets_a_clear_error(
    comm: kiwi_anyio.Communicator,
) -> None:
    """Plain-function subscribers run in a worker thread; an event-loop call there fails on
    trio (and only works by accident on asyncio): the caller is told why and what to do."""

    def wrong(_comm: Any, _msg: Any) -> None:
        anyio.lowlevel.current_token()  # an event-loop call from the worker thread

    with anyio.fail_after(TIMEOUT):
        await comm.add_rpc_subscriber(wrong, "wrong")
        with pytest.raises(kiwi_anyio.RemoteException, match=r"async def.*from_thread"):
            await (await comm.rpc_send("wrong", 1))


async def test_testing_mode_after_a_normal_run_says_why_its_exchange_is_refused(
    broker_url: str,
) -> None:
    """kiwiPy's trap: testing_mode with the names a normal run declared gets
    ``406 inequivalent arg 'auto_delete'``; the error explains it."""
    options = _names()
    options["testing_mode"] = False
    with anyio.fail_after(30):
        async with kiwi_anyio.connect(broker_url, **options) as normal:
            await normal.broadcast_send("declares the message exchange")
            options["testing_mode"] = True
            async with kiwi_anyio.connect(broker_url, **options) as testing:
                with pytest.raises(kiwi_anyio.DeliveryFailed, match="with testing_mode") as info:
                    await testing.broadcast_send("refused")
                assert "private_names" in str(info.value)
        async with (
            kiwi_anyio.protocol.connect(broker_url) as conn,
            conn.channel() as ch,
        ):
            await ch.exchange_delete(options["message_exchange"])

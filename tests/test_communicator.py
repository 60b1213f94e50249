"""The Communicator against the real broker, on asyncio and trio.

Covers every behaviour kiwiPy's own test suite checks (kiwipy.md §3), plus the deliberate
fixes (differences-from-kiwipy.md) and structured-lifetime guarantees.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import AsyncIterator
from contextvars import ContextVar
from typing import Any

import anyio
import anyio.lowlevel
import pytest

import kiwi_anyio
from kiwi_anyio import (
    BroadcastFilter,
    CommunicatorClosed,
    DuplicateSubscriberIdentifier,
    Future,
    QueueEmpty,
    RemoteException,
    TaskRejected,
    UnroutableError,
)
from kiwi_anyio.protocol import Properties
from kiwi_anyio.protocol import connect as amqp_connect
from kiwi_anyio.robust.consumer import HANDLER_POOL_KEEP
from kiwi_anyio.testing.pytest_plugin import private_names

pytestmark = [pytest.mark.anyio, pytest.mark.broker]

TIMEOUT = 20


def names() -> dict[str, Any]:
    return private_names("test")


@pytest.fixture
def comm_options() -> dict[str, Any]:
    return names()


@pytest.fixture(params=["rabbitmq", "memory"])
def url(request: pytest.FixtureRequest) -> str:
    """Every test runs on RabbitMQ and on the embedded memory:// broker."""
    if request.param == "memory":
        return f"memory://test-{uuid.uuid4().hex}"
    return str(request.getfixturevalue("broker_url"))


def raw_connection(url: str) -> Any:
    """A plain AMQP connection (or the memory broker's equivalent) to ``url``."""
    if url.startswith("memory://"):
        from kiwi_anyio import memory

        return memory.connect(url)
    return amqp_connect(url)


@pytest.fixture
async def comm(url: str, comm_options: dict[str, Any]) -> AsyncIterator[kiwi_anyio.Communicator]:
    async with kiwi_anyio.connect(url, **comm_options) as communicator:
        yield communicator


class Inbox:
    """Collects values and lets a test wait for a number of them."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self._changed = anyio.Event()

    def put(self, item: Any) -> None:
        self.items.append(item)
        self._changed.set()

    def put_threadsafe(self, item: Any) -> None:
        anyio.from_thread.run_sync(self.put, item)

    async def wait_for(self, count: int) -> list[Any]:
        with anyio.fail_after(TIMEOUT):
            while len(self.items) < count:
                self._changed = anyio.Event()
                await self._changed.wait()
        return self.items


# ---------------------------------------------------------------- lifetime


async def test_context_and_close(url: str, comm_options: dict[str, Any]) -> None:
    with anyio.fail_after(TIMEOUT):
        async with kiwi_anyio.connect(url, **comm_options) as comm:
            assert not comm.is_closed()
        assert comm.is_closed()

        def sub(*_: Any) -> None:
            return None

        with pytest.raises(CommunicatorClosed):
            await comm.add_rpc_subscriber(sub)
        with pytest.raises(CommunicatorClosed):
            await comm.rpc_send("x", 1)
        with pytest.raises(CommunicatorClosed):
            await comm.add_task_subscriber(sub)
        with pytest.raises(CommunicatorClosed):
            await comm.task_send(1)
        with pytest.raises(CommunicatorClosed):
            await comm.add_broadcast_subscriber(sub)
        with pytest.raises(CommunicatorClosed):
            await comm.broadcast_send(1)


async def test_user_exception_propagates_unwrapped(url: str, comm_options: dict[str, Any]) -> None:
    with anyio.fail_after(TIMEOUT), pytest.raises(KeyError, match="mine"):
        async with kiwi_anyio.connect(url, **comm_options):
            raise KeyError("mine")


async def test_connection_listener_sees_connect_and_close(
    url: str, comm_options: dict[str, Any]
) -> None:
    events: list[tuple[str, Any]] = []
    with anyio.fail_after(TIMEOUT):
        communicator = kiwi_anyio.connect(url, **comm_options)
        communicator.add_connection_listener(lambda event, error: events.append((event, error)))
        async with communicator:
            assert communicator.is_connected
        assert events == [("connected", None), ("closed", None)]


async def test_rpc_sent_just_before_close_reaches_the_local_subscriber(
    url: str, comm_options: dict[str, Any]
) -> None:
    inbox = Inbox()

    async def rpc(_comm: Any, msg: Any) -> None:
        inbox.put(msg)

    with anyio.fail_after(TIMEOUT):
        async with kiwi_anyio.connect(url, **comm_options) as communicator:
            await communicator.add_rpc_subscriber(rpc, "last")
            await communicator.rpc_send("last", "goodbye")
            await inbox.wait_for(1)
    assert inbox.items == ["goodbye"]


async def test_server_properties(comm: kiwi_anyio.Communicator, url: str) -> None:
    props = comm.server_properties
    if url.startswith("memory://"):
        assert props["product"] == "kiwi_anyio memory broker"
        return
    assert props["product"] == "RabbitMQ"
    assert "version" in props
    assert str(props["platform"]).startswith("Erlang")


async def test_pending_futures_fail_on_close(url: str, comm_options: dict[str, Any]) -> None:
    with anyio.fail_after(TIMEOUT):
        async with kiwi_anyio.connect(url, **comm_options) as comm:
            future = await comm.task_send("nobody takes this")
            assert future is not None
        with pytest.raises(CommunicatorClosed):
            await future


# ---------------------------------------------------------------- RPC


async def test_rpc_send_receive(comm: kiwi_anyio.Communicator) -> None:
    inbox = Inbox()

    def rpc(_comm: Any, msg: Any) -> str:
        inbox.put_threadsafe(msg)
        return "nuthin bra"

    with anyio.fail_after(TIMEOUT):
        await comm.add_rpc_subscriber(rpc, "rpc")
        future = await comm.rpc_send("rpc", "sup yo'")
        assert await future == "nuthin bra"
        assert inbox.items == ["sup yo'"]


async def test_add_remove_rpc_subscriber(comm: kiwi_anyio.Communicator) -> None:
    async def rpc(_comm: Any, msg: Any) -> bool:
        return True

    with anyio.fail_after(TIMEOUT):
        ident = await comm.add_rpc_subscriber(rpc, "rpc")
        assert ident == "rpc"
        assert await (await comm.rpc_send("rpc", None)) is True
        await comm.remove_rpc_subscriber(ident)
        with pytest.raises(UnroutableError):
            await comm.rpc_send("rpc", None)
        await comm.add_rpc_subscriber(rpc, "rpc")
        assert await (await comm.rpc_send("rpc", None)) is True
        with pytest.raises(ValueError, match="unknown"):
            await comm.remove_rpc_subscriber("nobody")


async def test_rpc_nested_futures(comm: kiwi_anyio.Communicator) -> None:
    """The subscriber returns future1 -> future2 -> RESULT: each level is a "pending"."""

    async def rpc(_comm: Any, msg: Any) -> Future[Any]:
        future1: Future[Any] = Future()
        future2: Future[Any] = Future()
        future1.set_result(future2)
        future2.set_result("RESULT")
        return future1

    with anyio.fail_after(TIMEOUT):
        await comm.add_rpc_subscriber(rpc, "nested")
        outer = await comm.rpc_send("nested", None)
        level1 = await outer
        assert isinstance(level1, Future)
        level2 = await level1
        assert isinstance(level2, Future)
        assert await level2 == "RESULT"
        assert await (await comm.rpc_send("nested", None)).unwrap() == "RESULT"


async def test_rpc_exception(comm: kiwi_anyio.Communicator) -> None:
    inbox = Inbox()

    async def rpc(_comm: Any, msg: Any) -> None:
        inbox.put(msg)
        raise RuntimeError("I cannae do it Captain!")

    with anyio.fail_after(TIMEOUT):
        await comm.add_rpc_subscriber(rpc, "fail")
        with pytest.raises(RemoteException, match="cannae") as info:
            await (await comm.rpc_send("fail", "the message"))
        assert info.value.remote_type == "RuntimeError"
        assert info.value.remote_traceback and "RuntimeError" in info.value.remote_traceback
        assert inbox.items == ["the message"]


async def test_rpc_unroutable(comm: kiwi_anyio.Communicator) -> None:
    with anyio.fail_after(TIMEOUT), pytest.raises(UnroutableError, match="noone"):
        await comm.rpc_send("noone", "hello?")


async def test_duplicate_rpc_identifier(
    comm: kiwi_anyio.Communicator, url: str, comm_options: dict[str, Any]
) -> None:
    async def rpc(_comm: Any, msg: Any) -> int:
        return 1

    with anyio.fail_after(TIMEOUT):
        await comm.add_rpc_subscriber(rpc, "only-one")
        with pytest.raises(DuplicateSubscriberIdentifier):
            await comm.add_rpc_subscriber(rpc, "only-one")
        # another process (here: another connection) cannot take it either
        async with kiwi_anyio.connect(url, **comm_options) as other:
            with pytest.raises(DuplicateSubscriberIdentifier):
                await other.add_rpc_subscriber(rpc, "only-one")
            assert await (await other.rpc_send("only-one", None)) == 1


async def test_rpc_identifier_wildcards_refused(comm: kiwi_anyio.Communicator) -> None:
    async def rpc(_comm: Any, msg: Any) -> int:
        return 1

    for bad in ("a.*", "#", "x*y"):
        with pytest.raises(ValueError, match=r"cannot contain"):
            await comm.add_rpc_subscriber(rpc, bad)


async def test_scoped_rpc_subscriber(comm: kiwi_anyio.Communicator) -> None:
    async def rpc(_comm: Any, msg: Any) -> Any:
        return msg

    with anyio.fail_after(TIMEOUT):
        async with comm.rpc_subscriber(rpc, "scoped") as ident:
            assert ident == "scoped"
            assert await (await comm.rpc_send("scoped", 5)) == 5
        with pytest.raises(UnroutableError):
            await comm.rpc_send("scoped", 5)


async def test_blocking_subscriber_does_not_stall_others(comm: kiwi_anyio.Communicator) -> None:
    release = threading.Event()

    def slow(_comm: Any, msg: Any) -> str:
        release.wait(TIMEOUT)
        return "slow"

    async def fast(_comm: Any, msg: Any) -> str:
        return "fast"

    with anyio.fail_after(TIMEOUT):
        await comm.add_rpc_subscriber(slow, "slow")
        await comm.add_rpc_subscriber(fast, "fast")
        slow_future = await comm.rpc_send("slow", None)
        assert await (await comm.rpc_send("fast", None)) == "fast"
        assert not slow_future.done()
        release.set()
        assert await slow_future == "slow"


async def test_cancelling_an_await_discards_the_pending_reply(
    comm: kiwi_anyio.Communicator,
) -> None:
    gate = anyio.Event()

    async def rpc(_comm: Any, msg: Any) -> str:
        await gate.wait()
        return "late"

    with anyio.fail_after(TIMEOUT):
        await comm.add_rpc_subscriber(rpc, "late")
        future = await comm.rpc_send("late", None)
        assert len(comm._pending) == 1
        with anyio.move_on_after(0.1):
            await future
        assert future.cancelled()
        assert len(comm._pending) == 0
        gate.set()
        # the late reply is dropped; the communicator goes on working
        other = await comm.rpc_send("late", None)
        assert await other == "late"
        assert len(comm._pending) == 0


async def test_wait_timeout_keeps_the_future(comm: kiwi_anyio.Communicator) -> None:
    gate = anyio.Event()

    async def rpc(_comm: Any, msg: Any) -> str:
        await gate.wait()
        return "done"

    with anyio.fail_after(TIMEOUT):
        await comm.add_rpc_subscriber(rpc, "gated")
        future = await comm.rpc_send("gated", None)
        with pytest.raises(TimeoutError):
            await future.wait(0.1)
        assert not future.done()
        gate.set()
        assert await future.wait(TIMEOUT) == "done"


# ---------------------------------------------------------------- tasks


async def test_task_send(comm: kiwi_anyio.Communicator) -> None:
    inbox = Inbox()

    def worker(_comm: Any, task: Any) -> int:
        inbox.put_threadsafe(task)
        return 42

    with anyio.fail_after(TIMEOUT):
        await comm.add_task_subscriber(worker)
        future = await comm.task_send("The meaning?")
        assert future is not None
        assert await future == 42
        assert inbox.items == ["The meaning?"]


async def test_future_task(comm: kiwi_anyio.Communicator) -> None:
    delegated: Future[int] = Future()

    async def worker(_comm: Any, task: Any) -> Future[int]:
        return delegated

    with anyio.fail_after(TIMEOUT):
        await comm.add_task_subscriber(worker)
        future = await comm.task_send("x")
        assert future is not None
        inner = await future
        assert isinstance(inner, Future)
        assert not inner.done()
        delegated.set_result(42)
        assert await inner == 42


async def test_task_exception(comm: kiwi_anyio.Communicator) -> None:
    async def worker(_comm: Any, task: Any) -> None:
        raise RuntimeError("task failed")

    with anyio.fail_after(TIMEOUT):
        await comm.add_task_subscriber(worker)
        future = await comm.task_send("x")
        assert future is not None
        with pytest.raises(RemoteException, match="task failed"):
            await future


async def test_task_no_reply(comm: kiwi_anyio.Communicator) -> None:
    inbox = Inbox()

    async def worker(_comm: Any, task: Any) -> int:
        inbox.put(task)
        return 1

    with anyio.fail_after(TIMEOUT):
        await comm.add_task_subscriber(worker)
        # the overloads promise None; the test checks it at run time
        assert await comm.task_send("once", no_reply=True) is None  # type: ignore[func-returns-value]
        await inbox.wait_for(1)
        await anyio.sleep(0.3)
        assert inbox.items == ["once"]


async def test_add_remove_task_subscriber(comm: kiwi_anyio.Communicator) -> None:
    async def worker(_comm: Any, task: Any) -> Any:
        return task

    with anyio.fail_after(TIMEOUT):
        ident = await comm.add_task_subscriber(worker)
        future = await comm.task_send("a")
        assert future is not None and await future == "a"
        await comm.remove_task_subscriber(ident)
        future = await comm.task_send("b")
        assert future is not None
        with pytest.raises(TimeoutError):
            await future.wait(0.3)
        await comm.add_task_subscriber(worker)
        assert await future.wait(TIMEOUT) == "b"
        with pytest.raises(ValueError, match="unknown"):
            await comm.remove_task_subscriber("unknown")


async def test_task_rejected_goes_to_next_subscriber(comm: kiwi_anyio.Communicator) -> None:
    async def rejecter(_comm: Any, task: Any) -> None:
        raise TaskRejected("not mine")

    async def acceptor(_comm: Any, task: Any) -> str:
        return "accepted"

    with anyio.fail_after(TIMEOUT):
        await comm.add_task_subscriber(rejecter)
        await comm.add_task_subscriber(acceptor)
        future = await comm.task_send("x")
        assert future is not None and await future == "accepted"


async def test_task_all_reject_requeues_to_another_worker(
    url: str, comm_options: dict[str, Any]
) -> None:
    rejected = Inbox()

    async def rejecter(_comm: Any, task: Any) -> None:
        rejected.put(task)
        raise TaskRejected("not mine")

    async def acceptor(_comm: Any, task: Any) -> str:
        return "other worker"

    with anyio.fail_after(TIMEOUT):
        async with kiwi_anyio.connect(url, **comm_options) as picky:
            await picky.add_task_subscriber(rejecter)
            future = await picky.task_send("hot potato")
            assert future is not None
            await rejected.wait_for(1)
            async with kiwi_anyio.connect(url, **comm_options) as willing:
                await willing.add_task_subscriber(acceptor)
                assert await future == "other worker"
            # no hot loop: during the requeue delay the task was rejected few times
            assert len(rejected.items) <= 3


async def test_unfinished_task_is_requeued_on_close(url: str, comm_options: dict[str, Any]) -> None:
    started = anyio.Event()
    inbox = Inbox()

    async def stuck(_comm: Any, task: Any) -> None:
        started.set()
        await anyio.sleep_forever()

    async def worker(_comm: Any, task: Any) -> str:
        inbox.put(task)
        return "finished elsewhere"

    with anyio.fail_after(TIMEOUT):
        async with kiwi_anyio.connect(url, **comm_options) as sender:
            async with kiwi_anyio.connect(url, **comm_options) as first:
                await first.add_task_subscriber(stuck)
                future = await sender.task_send("survivor")
                assert future is not None
                await started.wait()
            # the first worker closed mid-task: the task goes back and is not lost
            async with kiwi_anyio.connect(url, **comm_options) as second:
                await second.add_task_subscriber(worker)
                assert await future == "finished elsewhere"
                assert inbox.items == ["survivor"]


async def test_drain_timeout_lets_running_tasks_finish(
    url: str, comm_options: dict[str, Any]
) -> None:
    started = Inbox()

    async def worker(_comm: Any, task: int) -> int:
        started.put(task)
        await anyio.sleep(0.5)
        return task * 10

    with anyio.fail_after(TIMEOUT):
        async with kiwi_anyio.connect(url, **comm_options) as sender:
            async with kiwi_anyio.connect(
                url, task_prefetch_count=5, drain_timeout=10, **comm_options
            ) as draining:
                await draining.add_task_subscriber(worker)
                futures = [await sender.task_send(i) for i in range(5)]
                await started.wait_for(5)
                start = anyio.current_time()
            # leaving the block waited for the five running tasks, not for the full timeout
            assert anyio.current_time() - start < 5
            assert [await f for f in futures if f is not None] == [0, 10, 20, 30, 40]
    assert sorted(started.items) == [0, 1, 2, 3, 4]  # each ran once


class ConcurrencyProbe:
    """A slow echo subscriber that records how many of its calls ran at once."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.running = 0
        self.peak = 0

    async def __call__(self, _comm: Any, msg: Any) -> Any:
        self.running += 1
        self.peak = max(self.peak, self.running)
        await anyio.sleep(self.seconds)
        self.running -= 1
        return msg


async def test_prefetch_limits_concurrent_tasks(url: str, comm_options: dict[str, Any]) -> None:
    worker = ConcurrencyProbe(0.05)
    with anyio.fail_after(TIMEOUT):
        async with kiwi_anyio.connect(url, task_prefetch_count=3, **comm_options) as comm:
            await comm.add_task_subscriber(worker)
            futures = [await comm.task_send(i) for i in range(12)]
            assert [await f for f in futures if f is not None] == list(range(12))
    assert worker.peak == 3


async def test_many_rpc_calls_run_concurrently_and_again_later(
    comm: kiwi_anyio.Communicator,
) -> None:
    """More concurrent requests than the consumer keeps parked handlers for all run at
    once (none waits for another to finish), and a second burst is served the same way."""
    calls = HANDLER_POOL_KEEP + 72
    arrived = 0
    all_in = anyio.Event()

    async def gather(_comm: Any, msg: int) -> int:
        nonlocal arrived
        arrived += 1
        if arrived == calls:
            all_in.set()
        await all_in.wait()  # returns only once every call of the burst is running
        return msg

    with anyio.fail_after(TIMEOUT):
        identifier = f"gather-{uuid.uuid4().hex[:8]}"
        await comm.add_rpc_subscriber(gather, identifier)
        for burst in range(2):
            arrived = 0
            all_in = anyio.Event()
            futures = [await comm.rpc_send(identifier, burst * calls + i) for i in range(calls)]
            expected = [burst * calls + i for i in range(calls)]
            assert [await f for f in futures] == expected


async def test_rpc_prefetch_bounds_the_calls_handled_at_once(
    url: str, comm_options: dict[str, Any]
) -> None:
    """A flood of calls waits in the broker: at most ``rpc_prefetch_count`` are handled at
    once, and every call is answered."""
    slow = ConcurrencyProbe(0.02)
    with anyio.fail_after(TIMEOUT):
        async with kiwi_anyio.connect(url, rpc_prefetch_count=2, **comm_options) as comm:
            identifier = f"slow-{uuid.uuid4().hex[:8]}"
            await comm.add_rpc_subscriber(slow, identifier)
            futures = [await comm.rpc_send(identifier, i) for i in range(10)]
            assert [await f for f in futures] == list(range(10))
    assert slow.peak == 2


REQUEST: ContextVar[int | None] = ContextVar("REQUEST", default=None)


async def test_a_context_variable_set_by_a_subscriber_does_not_reach_the_next_call(
    comm: kiwi_anyio.Communicator,
) -> None:
    """Each request starts from the consumer's context, as if in a task of its own, even
    though handler tasks are reused."""

    async def tag(_comm: Any, msg: int) -> int | None:
        seen = REQUEST.get()
        REQUEST.set(msg)  # never reset, as a logging or tracing middleware might do
        return seen

    with anyio.fail_after(TIMEOUT):
        identifier = f"ctx-{uuid.uuid4().hex[:8]}"
        await comm.add_rpc_subscriber(tag, identifier)
        seen = [await (await comm.rpc_send(identifier, i)) for i in range(6)]
        await comm.add_task_subscriber(tag)
        for i in range(6):
            future = await comm.task_send(i)
            assert future is not None
            seen.append(await future)
    assert seen == [None] * 12


async def test_two_workers_share_tasks_exactly_once(url: str, comm_options: dict[str, Any]) -> None:
    handled: dict[int, list[str]] = {}

    def make(name: str) -> Any:
        async def worker(_comm: Any, task: int) -> str:
            handled.setdefault(task, []).append(name)
            await anyio.sleep(0.01)
            return name

        return worker

    with anyio.fail_after(TIMEOUT):
        async with (
            kiwi_anyio.connect(url, **comm_options) as a,
            kiwi_anyio.connect(url, **comm_options) as b,
        ):
            await a.add_task_subscriber(make("a"))
            await b.add_task_subscriber(make("b"))
            futures = [await a.task_send(i) for i in range(40)]
            results = [await f for f in futures if f is not None]
    assert sorted(handled) == list(range(40))
    assert all(len(v) == 1 for v in handled.values())
    assert set(results) == {"a", "b"}


async def test_custom_task_queue_and_next_task(comm: kiwi_anyio.Communicator) -> None:
    queue = comm.task_queue(f"custom-{uuid.uuid4().hex}")
    with anyio.fail_after(TIMEOUT):
        future = await queue.task_send("Hello!")
        assert future is not None
        async with queue.next_task(timeout=5.0) as task:
            assert task is not None
            assert task.body == "Hello!"
            async with task.processing() as outcome:
                outcome.set_result("Goodbye")
        assert await future == "Goodbye"
        with pytest.raises(QueueEmpty):
            async with queue.next_task(timeout=0.2):
                pass


async def test_next_task_process_and_set_result(comm: kiwi_anyio.Communicator) -> None:
    queue = comm.task_queue(f"custom-{uuid.uuid4().hex}")
    with anyio.fail_after(TIMEOUT):
        future = await queue.task_send(6)
        async with queue.next_task() as task:
            assert task is not None
            task.process().set_result(task.body * 7)
        assert future is not None and await future == 42


async def test_next_task_waits_for_a_task(comm: kiwi_anyio.Communicator) -> None:
    queue = comm.task_queue(f"custom-{uuid.uuid4().hex}")
    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as tg:

            async def send_later() -> None:
                await anyio.sleep(0.3)
                await queue.task_send("late", no_reply=True)

            tg.start_soon(send_later)
            async with queue.next_task(timeout=5.0) as task:
                assert task is not None and task.body == "late"
                task.process().set_result(None)


async def test_queue_iter(comm: kiwi_anyio.Communicator) -> None:
    queue = comm.task_queue(f"custom-{uuid.uuid4().hex}")
    with anyio.fail_after(TIMEOUT):
        futures = [await queue.task_send(i) for i in range(10)]
        async for task in queue:
            task.process().set_result(task.body * 10)
        assert [await f for f in futures if f is not None] == [i * 10 for i in range(10)]
        async for _ in queue:
            raise AssertionError("the queue should be empty")


async def test_queue_iter_not_process(comm: kiwi_anyio.Communicator) -> None:
    queue = comm.task_queue(f"custom-{uuid.uuid4().hex}")
    with anyio.fail_after(TIMEOUT):
        futures = [await queue.task_send(i) for i in range(10)]
        async for task in queue:
            if task.body < 5:
                task.process().set_result(task.body * 10)
        async for task in queue:
            task.process().set_result(task.body * 10)
        assert [await f for f in futures if f is not None] == [i * 10 for i in range(10)]


async def test_task_processing_exception(comm: kiwi_anyio.Communicator) -> None:
    queue = comm.task_queue(f"custom-{uuid.uuid4().hex}")
    with anyio.fail_after(TIMEOUT):
        future = await queue.task_send("bad")
        with pytest.raises(RuntimeError, match="processing failed"):  # noqa: PT012
            async with queue.next_task() as task:
                assert task is not None
                async with task.processing():
                    raise RuntimeError("processing failed")
        assert future is not None
        with pytest.raises(RemoteException, match="processing failed"):
            await future
        with pytest.raises(QueueEmpty):
            async with queue.next_task(timeout=0.2):
                pass


async def test_scoped_task_subscriber(comm: kiwi_anyio.Communicator) -> None:
    async def worker(_comm: Any, task: Any) -> Any:
        return task

    with anyio.fail_after(TIMEOUT):
        async with comm.task_subscriber(worker) as ident:
            assert isinstance(ident, str)
            future = await comm.task_send(1)
            assert future is not None and await future == 1
        future = await comm.task_send(2)
        assert future is not None
        with pytest.raises(TimeoutError):
            await future.wait(0.3)


# ---------------------------------------------------------------- broadcasts


async def test_broadcast_send(comm: kiwi_anyio.Communicator) -> None:
    inbox1, inbox2 = Inbox(), Inbox()

    def sub1(_comm: Any, body: Any, sender: Any, subject: Any, correlation_id: Any) -> None:
        inbox1.put_threadsafe(
            {"body": body, "subject": subject, "sender": sender, "correlation_id": correlation_id}
        )

    async def sub2(_comm: Any, body: Any, sender: Any, subject: Any, correlation_id: Any) -> None:
        inbox2.put(
            {"body": body, "subject": subject, "sender": sender, "correlation_id": correlation_id}
        )

    with anyio.fail_after(TIMEOUT):
        await comm.add_broadcast_subscriber(sub1)
        await comm.add_broadcast_subscriber(sub2)
        assert await comm.broadcast_send("so fat", sender="me", subject="yo momma") is True
        expected = {"body": "so fat", "subject": "yo momma", "sender": "me", "correlation_id": None}
        assert await inbox1.wait_for(1) == [expected]
        assert await inbox2.wait_for(1) == [expected]


async def _filtered(
    comm: kiwi_anyio.Communicator,
    subject: Any,
    sender: Any,
    messages: list[tuple[str, str]],
    expected: int,
) -> list[tuple[str, str]]:
    inbox = Inbox()

    async def sub(_comm: Any, body: Any, sender: Any, subject: Any, correlation_id: Any) -> None:
        inbox.put((sender, subject))

    await comm.add_broadcast_subscriber(BroadcastFilter(sub, subject=subject, sender=sender))
    for sender_, subject_ in messages:
        await comm.broadcast_send(None, sender=sender_, subject=subject_)
    items = await inbox.wait_for(expected)
    await anyio.sleep(0.2)  # nothing else arrives
    return list(items)


SUBJECTS = ["purchase.car", "purchase.piano", "sell.guitar", "sell.house"]
SENDERS = ["bob.jones", "alice.jones", "bob.smith", "alice.smith"]


async def test_broadcast_filter_subject(comm: kiwi_anyio.Communicator) -> None:
    got = await _filtered(comm, "purchase.*", None, [("s", s) for s in SUBJECTS], 2)
    assert [subject for _, subject in got] == ["purchase.car", "purchase.piano"]


async def test_broadcast_filter_sender(comm: kiwi_anyio.Communicator) -> None:
    got = await _filtered(comm, None, "*.jones", [(s, "subj") for s in SENDERS], 2)
    assert [sender for sender, _ in got] == ["bob.jones", "alice.jones"]


async def test_broadcast_filter_sender_and_subject(comm: kiwi_anyio.Communicator) -> None:
    messages = [(sender, subject) for sender in SENDERS for subject in SUBJECTS]
    got = await _filtered(comm, "purchase.*", "*.jones", messages, 4)
    assert sorted(got) == sorted(
        (sender, subject)
        for sender in ("bob.jones", "alice.jones")
        for subject in ("purchase.car", "purchase.piano")
    )


async def test_broadcast_filter_sender_and_subject_regex(comm: kiwi_anyio.Communicator) -> None:
    messages = [(sender, subject) for sender in SENDERS for subject in SUBJECTS]
    got = await _filtered(comm, re.compile("purchase.*"), re.compile(".*.jones"), messages, 4)
    assert len(got) == 4
    assert all(s.endswith("jones") and j.startswith("purchase") for s, j in got)


async def test_broadcast_filter_match(comm: kiwi_anyio.Communicator) -> None:
    messages = [(s, "subj") for s in ["alice.jones", "alice.jonesXYZ", "bob.jones"]]
    got = await _filtered(comm, None, "alice.jones", messages, 1)
    assert got == [("alice.jones", "subj")]


async def test_add_remove_broadcast_subscriber(comm: kiwi_anyio.Communicator) -> None:
    inbox = Inbox()

    async def sub(_comm: Any, body: Any, *_: Any) -> None:
        inbox.put(body)

    with anyio.fail_after(TIMEOUT):
        ident = await comm.add_broadcast_subscriber(sub)
        await comm.broadcast_send("first")
        assert await inbox.wait_for(1) == ["first"]
        await comm.remove_broadcast_subscriber(ident)
        await comm.broadcast_send("while away")  # nobody should ever see this
        await anyio.sleep(0.3)
        await comm.add_broadcast_subscriber(sub)
        await comm.broadcast_send("second")
        assert await inbox.wait_for(2) == ["first", "second"]
        await anyio.sleep(0.2)
        assert inbox.items == ["first", "second"]


async def test_broadcast_noone_listening(comm: kiwi_anyio.Communicator) -> None:
    with anyio.fail_after(TIMEOUT):
        assert await comm.broadcast_send("hello?", subject="void") is True


async def test_raising_broadcast_subscriber_does_not_stop_others(
    comm: kiwi_anyio.Communicator,
) -> None:
    inbox = Inbox()

    async def bad(*_: Any) -> None:
        raise ValueError("subscriber bug")

    async def good(_comm: Any, body: Any, *_: Any) -> None:
        inbox.put(body)

    with anyio.fail_after(TIMEOUT):
        await comm.add_broadcast_subscriber(bad)
        await comm.add_broadcast_subscriber(good)
        await comm.broadcast_send(1)
        await comm.broadcast_send(2)
        assert await inbox.wait_for(2) == [1, 2]


async def test_async_subscriber_inside_filter_is_awaited(comm: kiwi_anyio.Communicator) -> None:
    inbox = Inbox()

    async def sub(_comm: Any, body: Any, *_: Any) -> None:
        await anyio.lowlevel.checkpoint()
        inbox.put(body)

    with anyio.fail_after(TIMEOUT):
        await comm.add_broadcast_subscriber(BroadcastFilter(sub, subject="a.*"))
        await comm.broadcast_send("yes", subject="a.b")
        assert await inbox.wait_for(1) == ["yes"]


# ---------------------------------------------------------------- hostile input


async def test_undecodable_task_is_rejected_and_sender_told(
    url: str, comm: kiwi_anyio.Communicator
) -> None:
    """A body that is not YAML (or carries a Python tag) is rejected without requeue; a
    waiting sender gets an exception; the worker goes on serving."""
    inbox = Inbox()

    async def worker(_comm: Any, task: Any) -> Any:
        inbox.put(task)
        return task

    with anyio.fail_after(TIMEOUT):
        await comm.add_task_subscriber(worker)
        good = await comm.task_send("warm up")  # declares the queue and the reply queue
        assert good is not None and await good == "warm up"
        canary = f"/tmp/kiwi-canary-{uuid.uuid4().hex}"
        bad_bodies = [
            b"\xff\xfe not yaml: [",
            f'!!python/object/apply:os.system ["touch {canary}"]'.encode(),
            b"!!python/name:os.system",
        ]
        async with raw_connection(url) as conn, conn.channel(publisher_confirms=True) as ch:
            replies = f"raw-replies-{uuid.uuid4().hex}"
            await ch.queue_declare(replies, exclusive=True)
            await ch.queue_bind(replies, comm.task_exchange, routing_key=replies)
            for i, body in enumerate(bad_bodies):
                await ch.basic_publish(
                    body,
                    exchange=comm.task_exchange,
                    routing_key=comm.task_queue_name,
                    properties=Properties(correlation_id=str(i), reply_to=replies, delivery_mode=2),
                )
            received = []
            async with ch.basic_consume(replies, no_ack=True) as consumer:
                async for message in consumer:
                    received.append(message)
                    if len(received) == len(bad_bodies):
                        break
        for message in received:
            assert b"exception" in message.body
        assert sorted(str(m.properties.correlation_id) for m in received) == ["0", "1", "2"]
        assert not await anyio.Path(canary).exists()
        # still serving, and nothing was requeued in a loop
        after = await comm.task_send("after")
        assert after is not None and await after == "after"
        assert inbox.items == ["warm up", "after"]


async def test_throughput_many_tasks_in_flight(url: str, comm_options: dict[str, Any]) -> None:
    """Sends are pipelined: 500 task_sends in flight at once all complete."""

    async def worker(_comm: Any, task: int) -> int:
        return task + 1

    results: list[int] = []
    with anyio.fail_after(60):
        async with kiwi_anyio.connect(url, task_prefetch_count=50, **comm_options) as comm:
            await comm.add_task_subscriber(worker)

            async def send(i: int) -> None:
                future = await comm.task_send(i)
                assert future is not None
                results.append(await future)

            start = time.monotonic()
            async with anyio.create_task_group() as tg:
                for i in range(500):
                    tg.start_soon(send, i)
            assert time.monotonic() - start < 60
    assert sorted(results) == list(range(1, 501))


def test_request_ids_are_unique_and_a_forked_child_gets_new_ones() -> None:
    """Correlation ids are UUID-4 shaped and never repeat; after fork() the child's ids
    differ from the parent's (they would otherwise collide in a shared reply queue)."""
    from kiwi_anyio.patterns.requests import RequestIds as _RequestIds
    from kiwi_anyio.patterns.requests import dashed as _dashed
    from kiwi_anyio.patterns.requests import reseed_request_ids as _reseed_request_ids

    ids = _RequestIds()
    first = [ids.next_hex() for _ in range(1000)]
    assert len(set(first)) == 1000
    parsed = uuid.UUID(_dashed(first[0]))
    assert parsed.version == 4 and str(parsed) == _dashed(first[0])
    parent_next = ids.next_hex()
    ids._count -= 1  # as the forked child sees it: same counter
    _reseed_request_ids()  # what os.register_at_fork runs in the child
    assert ids.next_hex() != parent_next

"""The blocking API (kiwiPy's RmqThreadCommunicator) against the real broker."""

from __future__ import annotations

import concurrent.futures
import threading
import uuid
from typing import Any

import pytest

import kiwi_anyio
from kiwi_anyio import CommunicatorClosed, RemoteException, UnroutableError
from kiwi_anyio.testing.pytest_plugin import private_names

pytestmark = pytest.mark.broker

TIMEOUT = 20


def options() -> dict[str, Any]:
    return private_names("test")


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_rpc_task_broadcast_round_trips(broker_url: str, backend: str) -> None:
    heard: list[Any] = []
    got_one = threading.Event()

    def listener(_comm: Any, body: Any, sender: Any, subject: Any, correlation_id: Any) -> None:
        heard.append((body, subject))
        got_one.set()

    with kiwi_anyio.connect(broker_url, blocking_backend=backend, **options()) as comm:
        assert not comm.is_closed()
        comm.add_rpc_subscriber(lambda _c, n: n * 2, "double")
        comm.add_task_subscriber(lambda _c, task: f"{task}!")
        comm.add_broadcast_subscriber(kiwi_anyio.BroadcastFilter(listener, subject="kern.*"))
        assert comm.rpc_send("double", 21).result(TIMEOUT) == 42
        future = comm.task_send("hello")
        assert isinstance(future, concurrent.futures.Future)
        assert future.result(TIMEOUT) == "hello!"
        assert comm.broadcast_send("x", subject="cron.info") is True
        assert comm.broadcast_send("y", subject="kern.critical") is True
        assert got_one.wait(TIMEOUT)
        assert heard == [("y", "kern.critical")]
        assert comm.server_properties["product"] == "RabbitMQ"
    assert comm.is_closed()


def test_errors_come_back(broker_url: str) -> None:
    def fail(_comm: Any, msg: Any) -> None:
        raise ValueError(f"bad {msg}")

    with kiwi_anyio.connect(broker_url, **options()) as comm:
        comm.add_rpc_subscriber(fail, "fail")
        with pytest.raises(RemoteException, match="bad 1"):
            comm.rpc_send("fail", 1).result(TIMEOUT)
        with pytest.raises(UnroutableError):
            comm.rpc_send("nobody", 1)
        with pytest.raises(ValueError, match="unknown"):
            comm.remove_task_subscriber("nobody")


def test_callback_may_call_the_communicator(broker_url: str) -> None:
    """No deadlock: a subscriber (in a worker thread) uses the communicator itself."""
    with kiwi_anyio.connect(broker_url, **options()) as comm:
        comm.add_task_subscriber(lambda _c, task: task + 1)

        def relay(c: Any, msg: Any) -> Any:
            future = c.task_send(msg)
            return future.result(TIMEOUT)

        comm.add_rpc_subscriber(relay, "relay")
        assert comm.rpc_send("relay", 41).result(TIMEOUT) == 42


def test_nested_futures_become_thread_futures(broker_url: str) -> None:
    with kiwi_anyio.connect(broker_url, **options()) as comm:
        delegated: concurrent.futures.Future[int] = concurrent.futures.Future()
        comm.add_task_subscriber(lambda _c, task: delegated)
        outer = comm.task_send("x")
        assert outer is not None
        inner = outer.result(TIMEOUT)
        assert isinstance(inner, concurrent.futures.Future)
        delegated.set_result(42)
        assert inner.result(TIMEOUT) == 42


def test_task_queue_next_task_and_iteration(broker_url: str) -> None:
    with kiwi_anyio.connect(broker_url, **options()) as comm:
        queue = comm.task_queue(f"q-{uuid.uuid4().hex}")
        future = queue.task_send("Hello!")
        with queue.next_task(timeout=5.0) as task:
            assert task is not None and task.body == "Hello!"
            with task.processing() as outcome:
                outcome.set_result("Goodbye")
        assert future is not None and future.result(TIMEOUT) == "Goodbye"
        futures = [queue.task_send(i) for i in range(5)]
        for incoming in queue:
            incoming.process().set_result(incoming.body * 10)
        assert [f.result(TIMEOUT) for f in futures if f is not None] == [0, 10, 20, 30, 40]
        with pytest.raises(kiwi_anyio.QueueEmpty), queue.next_task(timeout=0.2):
            pass


def test_close_is_idempotent_and_final(broker_url: str) -> None:
    comm = kiwi_anyio.connect(broker_url, **options()).__enter__()
    comm.close()
    comm.close()
    assert comm.is_closed()
    with pytest.raises(CommunicatorClosed):
        comm.task_send(1)
    with pytest.raises(CommunicatorClosed):
        comm.rpc_send("x", 1)
    with pytest.raises(CommunicatorClosed):
        comm.broadcast_send(1)
    with pytest.raises(CommunicatorClosed):
        comm.add_rpc_subscriber(lambda *_: None)


def test_task_sent_just_before_exit_is_not_lost(broker_url: str) -> None:
    opts = options()
    opts["testing_mode"] = False
    queue = f"durable-{uuid.uuid4().hex}"
    with kiwi_anyio.connect(broker_url, **opts) as sender:
        sender.task_queue(queue).task_send("keep me", no_reply=True)
    with kiwi_anyio.connect(broker_url, **opts) as worker:
        q = worker.task_queue(queue)
        with q.next_task(timeout=5.0) as task:
            assert task is not None and task.body == "keep me"
            task.process().set_result(None)


@pytest.mark.filterwarnings("error::RuntimeWarning")  # no "coroutine was never awaited"
def test_kiwipy_non_with_style_fails_at_once_saying_how_to_write_it() -> None:
    comm = kiwi_anyio.connect(f"memory://test-{uuid.uuid4().hex}")
    for call in (
        lambda: comm.rpc_send("double", 21),
        lambda: comm.task_send(1),
        lambda: comm.broadcast_send("hi"),
        lambda: comm.add_rpc_subscriber(lambda _c, n: n, "x"),
        lambda: comm.add_task_subscriber(lambda _c, n: n),
        lambda: comm.add_broadcast_subscriber(lambda *_: None),
    ):
        with pytest.raises(CommunicatorClosed, match=r"with kiwi_anyio\.connect\(url\) as comm"):
            call()


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_the_suggested_non_with_style_works(backend: str) -> None:
    comm = kiwi_anyio.connect(
        f"memory://test-{uuid.uuid4().hex}", blocking_backend=backend
    ).__enter__()
    try:
        comm.add_rpc_subscriber(lambda _c, n: n * 2, "double")
        assert comm.rpc_send("double", 21).result(TIMEOUT) == 42
    finally:
        comm.close()
    assert comm.is_closed()


# ---------------------------------------------------------------- issue 20


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_blocking_api_created_inside_a_running_asyncio_loop(broker_url: str, backend: str) -> None:
    """A Jupyter cell: the communicator is made (and used) while an asyncio loop runs in the
    calling thread; with the trio backend its primitives must not bind to that loop."""
    import asyncio

    async def cell() -> list[Any]:
        comm = kiwi_anyio.connect(broker_url, blocking_backend=backend, **options())
        with comm as c:
            c.add_rpc_subscriber(lambda _c, n: n * 2, "double")
            queue = c.task_queue(f"jupyter-{uuid.uuid4().hex}")
            queue.add_task_subscriber(lambda _c, t: t + 1)
            heard = threading.Event()
            c.add_broadcast_subscriber(lambda *_args: heard.set())
            c.broadcast_send("hi")
            return [
                c.rpc_send("double", 21).result(TIMEOUT),
                queue.task_send(1).result(TIMEOUT),  # type: ignore[union-attr]
                heard.wait(TIMEOUT),
            ]

    assert asyncio.run(cell()) == [42, 2, True]


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_rpc_to_a_uuid_identifier(broker_url: str, backend: str) -> None:
    """kiwiPy formats any identifier into the routing key (plumpy uses a process's UUID)."""
    pid = uuid.uuid4()
    with kiwi_anyio.connect(broker_url, blocking_backend=backend, **options()) as comm:
        assert comm.add_rpc_subscriber(lambda _c, msg: ("got", msg), pid) == str(pid)
        assert comm.rpc_send(pid, 1).result(TIMEOUT) == ("got", 1)
        assert comm.rpc_send(str(pid), 2).result(TIMEOUT) == ("got", 2)
        comm.remove_rpc_subscriber(pid)
        with pytest.raises(UnroutableError):
            comm.rpc_send(pid, 3)
        assert comm.add_rpc_subscriber(lambda _c, msg: msg, 7) == "7"
        assert comm.rpc_send(7, "seven").result(TIMEOUT) == "seven"


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_broadcast_and_rpc_subscribers_come_back_after_the_last_was_removed(
    broker_url: str, backend: str
) -> None:
    """testing_mode's exchange is auto-delete: removing the last queue bound to it deletes
    it, and a new subscriber must declare it again (not fail with 404 no exchange)."""
    with kiwi_anyio.connect(broker_url, blocking_backend=backend, **options()) as comm:
        for round_ in range(2):
            heard: list[Any] = []
            got = threading.Event()

            def on_broadcast(_c: Any, body: Any, *_rest: Any) -> None:
                heard.append(body)  # noqa: B023 - called within this round
                got.set()  # noqa: B023

            ident = comm.add_broadcast_subscriber(on_broadcast)
            comm.broadcast_send(round_)
            assert got.wait(TIMEOUT)
            assert heard == [round_]
            comm.remove_broadcast_subscriber(ident)
            comm.add_rpc_subscriber(lambda _c, msg: msg, "echo")
            assert comm.rpc_send("echo", round_).result(TIMEOUT) == round_
            comm.remove_rpc_subscriber("echo")


def test_add_close_callback(broker_url: str) -> None:
    """kiwiPy's close callback: ``cb(communicator, error)`` once, when closed; a weak one
    is not kept alive by the communicator."""
    calls: list[tuple[Any, Any]] = []

    class Owner:
        def on_close(self, sender: Any, error: Any) -> None:
            calls.append(("weak", error))

    owner = Owner()
    comm = kiwi_anyio.connect(broker_url, **options()).__enter__()
    comm.add_close_callback(lambda sender, error: calls.append((sender, error)))
    comm.add_close_callback(owner.on_close, weak=True)
    gone = Owner()
    comm.add_close_callback(gone.on_close, weak=True)
    del gone
    assert calls == []
    comm.close()
    comm.close()
    assert calls == [(comm, None), ("weak", None)]

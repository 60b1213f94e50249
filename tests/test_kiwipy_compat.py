"""kiwi_anyio.compat.kiwipy: what the stand-in for kiwiPy 0.9 promises to kiwiPy's clients.

Our own tests of the behaviours kiwiPy's and plumpy's suites rely on (their suites are run
against the compat package outside this tree; see docs/coming-from-kiwipy.md).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import re
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

import kiwi_anyio
from kiwi_anyio.compat import kiwipy
from kiwi_anyio.compat.kiwipy import rmq
from kiwi_anyio.compat.kiwipy.rmq import defaults
from kiwi_anyio.exceptions import UndecodableMessage
from kiwi_anyio.testing.pytest_plugin import private_names

pytestmark = pytest.mark.broker

TIMEOUT = 20


def names() -> dict[str, Any]:
    return private_names("compat")


@pytest.fixture
def thread_comm(broker_url: str) -> Iterator[rmq.RmqThreadCommunicator]:
    comm = rmq.RmqThreadCommunicator.connect(connection_params={"url": broker_url}, **names())
    try:
        yield comm
    finally:
        comm.close()


# ---------------------------------------------------------------- names and install()


def test_install_makes_import_kiwipy_give_the_compat_package() -> None:
    code = (
        "import kiwi_anyio.compat.kiwipy as k; k.install()\n"
        "import kiwipy, kiwipy.rmq, kiwipy.futures, kiwipy.communications\n"
        "from kiwipy import rmq, BroadcastFilter, capture_exceptions, chain, copy_future\n"
        "from kiwipy.rmq import RmqThreadCommunicator, RmqCommunicator, async_connect\n"
        "import kiwi_anyio\n"
        "assert kiwipy is k and kiwipy.rmq is k.rmq\n"
        "assert kiwipy.UnroutableError is kiwi_anyio.UnroutableError\n"
        "assert kiwipy.Future is __import__('concurrent.futures').futures.Future\n"
        "assert kiwipy.TimeoutError is TimeoutError\n"
        "assert kiwipy.rmq.defaults.use_full_loader is False\n"
        "k.install(full_loader=True)\n"
        "assert kiwipy.rmq.defaults.codec_for() is kiwipy.rmq.defaults.FULL_LOADER_CODEC\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.stdout.strip() == "ok", out.stderr


def test_kiwipy_names_are_exported() -> None:
    for name in [
        "BroadcastFilter",
        "CancelledError",
        "Communicator",
        "CommunicatorClosed",
        "CommunicatorHelper",
        "DeliveryFailed",
        "DuplicateSubscriberIdentifier",
        "EventHelper",
        "Future",
        "InvalidStateError",
        "LocalCommunicator",
        "QueueEmpty",
        "RemoteException",
        "TaskRejected",
        "TimeoutError",
        "UnroutableError",
        "as_completed",
        "capture_exceptions",
        "chain",
        "connect",
        "copy_future",
        "wait",
    ]:
        assert hasattr(kiwipy, name), name
    for name in [
        "RmqThreadCommunicator",
        "RmqThreadTaskQueue",
        "RmqCommunicator",
        "RmqTaskQueue",
        "RmqIncomingTask",
        "RmqTaskPublisher",
        "async_connect",
        "connect",
    ]:
        assert hasattr(rmq, name), name
    assert kiwipy.QueueEmpty is kiwi_anyio.QueueEmpty
    with pytest.raises(ValueError, match="Unknown communicator uri"):
        kiwipy.connect("memory://x")


# ---------------------------------------------------------------- futures helpers


def test_capture_exceptions_sets_the_exception_and_reraises_ignored_ones() -> None:
    future: concurrent.futures.Future[Any] = kiwipy.Future()
    error = RuntimeError("boom")

    def boom() -> None:
        raise error

    with kiwipy.capture_exceptions(future):
        boom()
    assert future.exception() is error
    other: concurrent.futures.Future[Any] = kiwipy.Future()

    def ignored() -> None:
        with kiwipy.capture_exceptions(other, ignore=(KeyError,)):
            raise KeyError("k")

    with pytest.raises(KeyError):
        ignored()
    assert not other.done()


def test_copy_future_and_chain() -> None:
    source: concurrent.futures.Future[Any] = kiwipy.Future()
    target: concurrent.futures.Future[Any] = kiwipy.Future()
    kiwipy.chain(source, target)
    source.set_result(5)
    assert target.result(0) == 5
    failed: concurrent.futures.Future[Any] = kiwipy.Future()
    failed.set_exception(ValueError("v"))
    copied: concurrent.futures.Future[Any] = kiwipy.Future()
    kiwipy.copy_future(failed, copied)
    assert isinstance(copied.exception(), ValueError)
    cancelled: concurrent.futures.Future[Any] = kiwipy.Future()
    cancelled.cancel()
    into: concurrent.futures.Future[Any] = kiwipy.Future()
    kiwipy.copy_future(cancelled, into)
    assert into.cancelled()
    done: concurrent.futures.Future[Any] = kiwipy.Future()
    done.set_result("first")
    kiwipy.copy_future(source, done)  # a done target is left alone
    assert done.result() == "first"


# ---------------------------------------------------------------- BroadcastFilter


def test_broadcast_filter_has_kiwipys_rules() -> None:
    def sub(*_args: Any) -> str:
        return "called"

    prefix = kiwipy.BroadcastFilter(sub, sender="alice.jones")
    assert not prefix.is_filtered("alice.jonesXYZ", None)  # kiwiPy's prefix match
    assert prefix.is_filtered("bob.jones", None)
    subject = kiwipy.BroadcastFilter(sub, subject="purchase.*")
    assert not subject.is_filtered(None, "purchase.car")
    assert subject.is_filtered(None, "sale.car")
    assert not subject.is_filtered(None, None)  # a missing subject bypasses the filter
    plumpy_style = kiwipy.BroadcastFilter(sub, subject=re.compile(r"^(?!state_changed).*"))
    assert plumpy_style.is_filtered("pid", "state_changed.running.waiting")
    assert not plumpy_style.is_filtered("pid", "pause")
    both = kiwipy.BroadcastFilter(sub, subject="purchase.*", sender="*.jones")
    assert both.is_filtered("bob.smith", "purchase.car")
    assert not both.is_filtered("bob.jones", "purchase.car")
    equal = kiwipy.BroadcastFilter(sub, sender=7)
    assert not equal.is_filtered(7, None) and equal.is_filtered(8, None)
    assert equal(None, "body", 7, None, None) == "called"
    assert equal(None, "body", 8, None, None) is None
    assert isinstance(equal, kiwi_anyio.BroadcastFilter)


# ---------------------------------------------------------------- codec


def test_uuids_are_encoded_as_yaml_dump_writes_them_and_decoded_safely() -> None:
    pid = uuid.uuid4()
    body = defaults.ENCODER({"sender": pid, "task": (1, "x")})
    assert b"!!python/object:uuid.UUID" in body
    assert defaults.DECODER(body) == {"sender": pid, "task": (1, "x")}
    # what kiwiPy itself (yaml.dump) sends is read back too
    assert defaults.DECODER(yaml.dump({"pid": pid}, encoding="utf-8")) == {"pid": pid}
    # plain data is what kiwi_anyio's safe codec writes
    assert defaults.ENCODER({"a": 1}) == kiwi_anyio.codecs.YAML.encode({"a": 1})
    # kiwiPy's FullLoader does not read a UUID (PyYAML 6): a kiwiPy receiver drops it
    with pytest.raises(yaml.constructor.ConstructorError):
        yaml.load(body, Loader=yaml.FullLoader)
    assert defaults.FULL_LOADER_DECODER(b"a: !!python/tuple [1, 2]") == {"a": (1, 2)}


@pytest.mark.parametrize(
    "body",
    [
        b"!!python/name:os.system ''",
        b"!!python/object/apply:os.system ['true']",
        b"!!python/object:uuid.UUID {int: 1, extra: 2}",
        b"!!python/object:uuid.UUID {int: '1'}",
        b"!!python/object:uuid.UUID [1]",
    ],
)
def test_the_safe_decoder_refuses_python_objects(body: bytes) -> None:
    with pytest.raises(UndecodableMessage):
        defaults.DECODER(body)


def test_the_encoder_refuses_other_objects() -> None:
    with pytest.raises(TypeError, match="full_loader=True"):
        defaults.ENCODER({"x": object()})


# ---------------------------------------------------------------- CommunicatorHelper / Local


def test_local_communicator_dispatches_in_process() -> None:
    comm = kiwipy.LocalCommunicator()
    assert isinstance(comm, kiwipy.Communicator)
    comm.add_rpc_subscriber(lambda _c, msg: msg * 2, "double")
    assert comm.rpc_send("double", 21).result(0) == 42
    with pytest.raises(kiwipy.UnroutableError):
        comm.rpc_send("nobody", 1)

    def reject(_c: Any, _task: Any) -> Any:
        raise kiwipy.TaskRejected()

    comm.add_task_subscriber(reject)
    ident = comm.add_task_subscriber(lambda _c, task: task + 1)
    assert comm.task_send(1).result(0) == 2  # type: ignore[union-attr]
    assert comm.task_send(1, no_reply=True) is None
    comm.remove_task_subscriber(ident)
    with pytest.raises(concurrent.futures.TimeoutError):
        comm.task_send(1).result(0.01)  # type: ignore[union-attr]  # nobody: stays pending
    with pytest.raises(kiwipy.DuplicateSubscriberIdentifier):
        comm.add_rpc_subscriber(lambda _c, m: m, "double")
    with pytest.raises(ValueError, match="unknown RPC subscriber"):
        comm.remove_rpc_subscriber("nobody")
    heard: list[Any] = []
    comm.add_broadcast_subscriber(
        lambda _c, body, sender, subject, correlation_id: heard.append((body, sender, subject))
    )
    assert comm.broadcast_send("b", sender="s", subject="t") is True
    assert heard == [("b", "s", "t")]
    comm.add_rpc_subscriber(lambda _c, _m: 1 / 0, "fail")
    with pytest.raises(kiwipy.RemoteException):
        comm.rpc_send("fail", 1).result(0)
    with comm:
        pass
    assert comm.is_closed()
    with pytest.raises(kiwipy.CommunicatorClosed):
        comm.rpc_send("double", 1)


# ---------------------------------------------------------------- RmqThreadCommunicator


def test_thread_communicator_is_kiwipys(thread_comm: rmq.RmqThreadCommunicator) -> None:
    assert isinstance(thread_comm, kiwipy.Communicator)
    assert isinstance(thread_comm.loop(), asyncio.AbstractEventLoop)
    assert thread_comm._loop is thread_comm.loop()
    threads: list[int] = []

    def on_rpc(comm: Any, msg: Any) -> Any:
        assert comm is thread_comm
        threads.append(threading.get_ident())
        return f"re: {msg}"

    thread_comm.add_rpc_subscriber(on_rpc, "rpc")
    future = thread_comm.rpc_send("rpc", "hi")
    assert isinstance(future, kiwipy.Future)
    assert future.result(TIMEOUT) == "re: hi"
    loop_thread = thread_comm._live_portal().call(threading.get_ident)
    assert threads == [loop_thread]  # called on the communicator's loop, as kiwiPy does
    thread_comm.add_task_subscriber(lambda _c, task: task * 2)
    assert thread_comm.task_send(21).result(TIMEOUT) == 42  # type: ignore[union-attr]
    assert thread_comm.broadcast_send(None) is True
    assert thread_comm.server_properties["product"] == "RabbitMQ"


def test_thread_nested_futures_and_uuid_identifiers(
    thread_comm: rmq.RmqThreadCommunicator,
) -> None:
    pid = uuid.uuid4()
    inner: concurrent.futures.Future[Any] = kiwipy.Future()
    thread_comm.add_rpc_subscriber(lambda _c, _m: inner, pid)
    outer = thread_comm.rpc_send(pid, {"sender": pid})
    pending = outer.result(TIMEOUT)
    assert isinstance(pending, kiwipy.Future)
    inner.set_result(pid)
    assert pending.result(TIMEOUT) == pid  # a UUID crosses the wire


def test_thread_close_callback_and_closed_calls(broker_url: str) -> None:
    comm = rmq.RmqThreadCommunicator.connect(connection_params=broker_url, **names())
    result: list[Any] = []
    comm.add_close_callback(lambda sender, exc: result.append((sender, exc)))
    with comm:
        assert not comm.is_closed()
    assert comm.is_closed()
    comm.close()
    assert result == [(comm, None)]
    for call in (
        lambda: comm.rpc_send("x", 1),
        lambda: comm.task_send(1),
        lambda: comm.broadcast_send(1),
        lambda: comm.add_rpc_subscriber(lambda *_: None),
        lambda: comm.add_task_subscriber(lambda *_: None),
        lambda: comm.add_broadcast_subscriber(lambda *_: None),
    ):
        with pytest.raises(kiwipy.CommunicatorClosed):
            call()


def test_an_rpc_sent_just_before_close_reaches_the_local_subscriber(broker_url: str) -> None:
    got: concurrent.futures.Future[Any] = kiwipy.Future()
    comm = rmq.RmqThreadCommunicator.connect(connection_params={"url": broker_url}, **names())
    comm.add_rpc_subscriber(lambda _c, msg: got.set_result(msg), "local")
    with comm:
        comm.rpc_send("local", "last words")
    assert got.result(TIMEOUT) == "last words"


def test_a_forgotten_outcome_requeues_the_task(thread_comm: rmq.RmqThreadCommunicator) -> None:
    queue = thread_comm.task_queue(f"compat-{uuid.uuid4().hex}")
    sent = queue.task_send(1)
    assert sent is not None
    with queue.next_task(timeout=TIMEOUT) as task:
        assert task is not None
        outcome = task.process()
    with pytest.raises(kiwipy.QueueEmpty), queue.next_task(timeout=0.2):
        pass
    del outcome
    gc.collect()
    with queue.next_task(timeout=TIMEOUT) as task:
        assert task is not None
        task.process().set_result(10)
    assert sent.result(TIMEOUT) == 10


def test_thread_task_queue_processing_and_iteration(
    thread_comm: rmq.RmqThreadCommunicator,
) -> None:
    queue = thread_comm.task_queue(f"compat-{uuid.uuid4().hex}")
    failing = queue.task_send("x")
    assert failing is not None

    def process_and_fail() -> None:
        with queue.next_task(timeout=TIMEOUT) as task:
            assert task is not None
            with task.processing():
                raise RuntimeError("cannot")

    with pytest.raises(RuntimeError, match="cannot"):
        process_and_fail()
    with pytest.raises(kiwipy.RemoteException):
        failing.result(TIMEOUT)
    futures = [queue.task_send(i) for i in range(4)]
    for task in queue:
        task.process().set_result(task.body * 10)
    assert [f.result(TIMEOUT) for f in futures if f is not None] == [0, 10, 20, 30]


def test_a_subscriber_removed_while_it_answers_still_replies(
    thread_comm: rmq.RmqThreadCommunicator,
) -> None:
    """plumpy's "kill": the process removes its own RPC subscriber from inside the call it
    answers; the reply must still come (kiwiPy's behaviour), without a deadlock."""
    pid = uuid.uuid4()
    answer: concurrent.futures.Future[Any] = kiwipy.Future()

    def worker() -> None:
        thread_comm.remove_rpc_subscriber(pid)  # returns at once
        answer.set_result("killed")

    def on_rpc(_c: Any, _msg: Any) -> Any:
        threading.Thread(target=worker).start()
        return answer

    thread_comm.add_rpc_subscriber(on_rpc, pid)
    pending = thread_comm.rpc_send(pid, "kill").result(TIMEOUT)
    assert pending.result(TIMEOUT) == "killed"
    with pytest.raises(kiwipy.UnroutableError):
        thread_comm.rpc_send(pid, "again")


def test_an_rpc_subscriber_added_again_at_once_after_its_removal(
    thread_comm: rmq.RmqThreadCommunicator,
) -> None:
    """The removal drains in the background; adding the identifier again meanwhile must
    not have its new queue deleted by the old removal."""
    for round_ in range(10):
        thread_comm.add_rpc_subscriber(lambda _c, msg: msg, "again")
        assert thread_comm.rpc_send("again", round_).result(TIMEOUT) == round_
        thread_comm.remove_rpc_subscriber("again")
        with pytest.raises(kiwipy.UnroutableError):
            thread_comm.rpc_send("again", None)


def test_plumpy_style_loop_wrapper(thread_comm: rmq.RmqThreadCommunicator) -> None:
    """What plumpy's LoopCommunicator does: subscribers scheduled on the caller's asyncio
    loop, answered with thread futures; the caller awaits ``asyncio.wrap_future``."""

    async def main() -> Any:
        loop = asyncio.get_running_loop()

        def on_loop(callback: Any) -> Any:
            def converted(comm: Any, *args: Any) -> concurrent.futures.Future[Any]:
                async def run() -> Any:
                    assert asyncio.get_running_loop() is loop
                    return callback(comm, *args)

                return asyncio.run_coroutine_threadsafe(run(), loop)

            return converted

        heard: asyncio.Future[Any] = loop.create_future()
        thread_comm.add_rpc_subscriber(on_loop(lambda _c, msg: msg + 1), "plus-one")
        thread_comm.add_broadcast_subscriber(
            kiwipy.BroadcastFilter(
                on_loop(lambda _c, body, *_: heard.set_result(body)), subject="state.*"
            )
        )
        thread_comm.broadcast_send("ignored", subject="other")
        thread_comm.broadcast_send("seen", sender=uuid.uuid4(), subject="state.done")
        pending = await asyncio.wrap_future(thread_comm.rpc_send("plus-one", 1))
        result = await asyncio.wrap_future(pending)
        return result, await asyncio.wait_for(heard, TIMEOUT)

    assert asyncio.run(main()) == (2, "seen")


# ---------------------------------------------------------------- RmqCommunicator (asyncio)


def test_async_communicator_shapes(broker_url: str) -> None:
    async def main() -> None:
        comm = await rmq.async_connect({"url": broker_url}, **names())
        closed: list[Any] = []
        comm.add_close_callback(lambda sender, exc: closed.append(sender))
        try:
            await comm.add_rpc_subscriber(lambda _c, msg: f"re: {msg}", "rpc")
            future = await comm.rpc_send("rpc", "hi")
            assert asyncio.isfuture(future)
            assert await asyncio.wait_for(future, TIMEOUT) == "re: hi"
            await comm.remove_rpc_subscriber("rpc")
            with pytest.raises(kiwipy.UnroutableError):
                await comm.rpc_send("rpc", "hi")
            loop_future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            await comm.add_task_subscriber(lambda _c, _t: loop_future)
            sent = await comm.task_send("t")
            assert sent is not None
            pending = await asyncio.wait_for(sent, TIMEOUT)
            assert asyncio.isfuture(pending)
            loop_future.set_result(42)  # the subscriber ran on this loop: no thread hop
            assert await asyncio.wait_for(pending, TIMEOUT) == 42
            received: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            await comm.add_broadcast_subscriber(
                kiwipy.BroadcastFilter(
                    lambda _c, body, *_: received.set_result(body), subject="s.*"
                )
            )
            assert await comm.broadcast_send("b", subject="s.x") is True
            assert await asyncio.wait_for(received, TIMEOUT) == "b"
            assert comm.server_properties["product"] == "RabbitMQ"
        finally:
            await asyncio.create_task(comm.disconnect())  # exited in another task
        assert closed == [comm]
        assert comm.is_closed()

    asyncio.run(main())


def test_async_task_queue_and_forgotten_outcome(broker_url: str) -> None:
    async def main() -> None:
        async with rmq.RmqCommunicator({"url": broker_url}, **names()) as comm:
            queue = await comm.task_queue(f"compat-{uuid.uuid4().hex}")
            first = await queue.task_send(1)
            assert first is not None
            outcomes = [first]
            async with queue.next_task(timeout=TIMEOUT) as task:
                assert task is not None
                outcome = task.process()
            with pytest.raises(kiwipy.QueueEmpty):
                async with queue.next_task(timeout=0.2):
                    pass
            del outcome
            gc.collect()
            async with queue.next_task(timeout=TIMEOUT) as task:
                assert task is not None
                task.process().set_result(10)
            done, _ = await asyncio.wait(outcomes, timeout=TIMEOUT)
            assert [f.result() for f in done] == [10]
            await queue.task_send(2)
            async for task in queue:
                task.process().set_result(task.body)

    asyncio.run(main())


def test_standalone_task_queue(broker_url: str) -> None:
    async def main() -> None:
        queue = rmq.RmqTaskQueue(
            {"url": broker_url},
            exchange_name=f"compat.x.{uuid.uuid4().hex}",
            queue_name=f"compat.q.{uuid.uuid4().hex}",
            testing_mode=True,
        )
        await queue.connect()
        try:
            await queue.add_task_subscriber(lambda _c, task: task + 1)
            future = await queue.task_send(1)
            assert future is not None
            assert await asyncio.wait_for(future, TIMEOUT) == 2
            assert await queue.task_send(1, no_reply=True) is None
        finally:
            await queue.disconnect()

    asyncio.run(main())


def test_connection_params_forms() -> None:
    from kiwi_anyio.compat.kiwipy.rmq._common import url_from_params

    assert url_from_params(None) == "amqp://guest:guest@127.0.0.1/"
    assert url_from_params("amqp://a:b@h:1/v") == "amqp://a:b@h:1/v"
    assert url_from_params({"url": "amqp://h/"}) == "amqp://h/"
    assert (
        url_from_params({"host": "h", "port": 7, "login": "u", "password": "p/w"})
        == "amqp://u:p%2Fw@h:7/%2F"
    )
    with pytest.raises(TypeError):
        url_from_params(5)

    class AioPikaConnection:  # what kiwiPy's RmqTaskQueue and RmqTaskPublisher are given
        url = "amqp://u:p@h:7/v"  # aio-pika's is a yarl.URL: str() gives it whole

    assert url_from_params(AioPikaConnection()) == "amqp://u:p@h:7/v"
    assert url_from_params({"url": None, "host": "h"}) == "amqp://guest:guest@h:5672/%2F"


# ---------------------------------------------------------------- unroutable tasks


def test_an_unroutable_task_is_kiwipys_error() -> None:
    from kiwi_anyio.compat.kiwipy.exceptions import TaskUnroutable, task_unroutable_class
    from kiwi_anyio.compat.kiwipy.rmq._tasks import kiwipy_task_errors
    from kiwi_anyio.exceptions import MessageReturned

    class DeliveryError(Exception):  # stands for aio-pika's, whose __init__ is not called
        def __init__(self, message: Any, frame: Any) -> None:
            raise AssertionError("not called")

    cls = task_unroutable_class(DeliveryError)
    assert cls is task_unroutable_class(DeliveryError)  # one class per base
    assert issubclass(cls, TaskUnroutable) and issubclass(cls, DeliveryError)
    assert issubclass(cls, kiwipy.UnroutableError)
    returned = MessageReturned(312, "NO_ROUTE", "x", "q")
    error = cls("no queue", returned)
    assert str(error) == "no queue" and error.message is None
    assert (error.frame.reply_code, error.frame.reply_text) == (312, "NO_ROUTE")
    assert (error.frame.exchange, error.frame.routing_key) == ("x", "q")
    assert cls("no queue").frame is None
    # what kiwi_anyio raises (the return as the error, its cause or its context) is mapped
    for cause, context in [(None, returned), (returned, None), (None, None)]:
        unroutable = kiwipy.UnroutableError("nothing routes it")
        unroutable.__cause__, unroutable.__context__ = cause, context
        with pytest.raises(TaskUnroutable) as caught, kiwipy_task_errors():
            raise unroutable
        assert caught.value.__cause__ is unroutable
        assert str(caught.value) == "nothing routes it"
        frame = caught.value.frame
        assert (frame is None) == (cause is None and context is None)
    with pytest.raises(TaskUnroutable) as direct, kiwipy_task_errors():
        raise returned  # the client's own error, whether or not it is an UnroutableError
    assert direct.value.frame.routing_key == "q"
    with pytest.raises(kiwipy.RemoteException), kiwipy_task_errors():
        raise kiwipy.RemoteException("left alone")


def test_a_bare_task_publisher_does_not_declare_the_queue(broker_url: str) -> None:
    """kiwiPy's RmqTaskPublisher declares the exchange only: with no queue bound, a task is
    unroutable (kiwiPy: aio-pika's DeliveryError); once a queue of that name is made, it is
    routed there."""

    async def main() -> None:
        exchange = f"compat.x.{uuid.uuid4().hex}"
        name = f"compat.q.{uuid.uuid4().hex}"
        publisher = rmq.RmqTaskPublisher(
            {"url": broker_url}, queue_name=name, exchange_name=exchange, testing_mode=True
        )
        await publisher.connect()
        try:
            with pytest.raises(kiwipy.UnroutableError) as caught:
                await publisher.task_send("nobody")
            assert isinstance(caught.value, kiwipy.exceptions.TaskUnroutable)
            assert caught.value.frame is not None
            assert (caught.value.frame.reply_code, caught.value.frame.routing_key) == (312, name)
            queue = rmq.RmqTaskQueue(
                {"url": broker_url}, exchange_name=exchange, queue_name=name, testing_mode=True
            )
            await queue.connect()
            try:
                await queue.add_task_subscriber(lambda _c, task: f"done: {task}")
                future = await publisher.task_send("someone")
                assert future is not None
                assert await asyncio.wait_for(future, TIMEOUT) == "done: someone"
            finally:
                await queue.disconnect()
        finally:
            await publisher.disconnect()

    asyncio.run(main())


def test_a_cancelled_connect_cancels_the_connection_attempt() -> None:
    """A broker that accepts the socket and never speaks: ``connect()`` waits; cancelled,
    the attempt ends with it and the communicator cannot be connected again."""
    import socket

    async def main() -> None:
        with socket.socket() as server:
            server.bind(("127.0.0.1", 0))
            server.listen(1)
            port = server.getsockname()[1]
            comm = rmq.RmqCommunicator(f"amqp://guest:guest@127.0.0.1:{port}/", **names())
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(comm.connect(), 0.5)
            runner = comm._runner
            assert runner is not None
            await asyncio.wait([runner], timeout=2)  # not the handshake's own timeout
            assert runner.done()
            assert not comm.connected()
            with pytest.raises(kiwipy.CommunicatorClosed):
                await comm.connect()

    asyncio.run(main())

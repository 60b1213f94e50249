"""kiwi_anyio.App: subscribers declared up front, served in the caller's task group, tested on
memory:// with the test client and the pytest plugin's fixture; on asyncio and trio."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.lowlevel
import pytest

import kiwi_anyio
from kiwi_anyio import App, RemoteException
from kiwi_anyio.app import AppStatus

pytestmark = pytest.mark.anyio

TIMEOUT = 20


def memory_url() -> str:
    return f"memory://app-{uuid.uuid4().hex}"


def make_app() -> App:
    app = App(name="calc")

    @app.task(queue="double", prefetch_count=4)
    async def double(_comm: Any, n: int) -> int:
        return n * 2

    @app.task
    def default_queue(_comm: Any, n: int) -> int:  # a plain function: runs in a thread
        return n + 100

    @app.rpc("inc")
    async def inc(_comm: Any, n: int) -> int:
        return n + 1

    @app.rpc
    async def fail(_comm: Any, msg: Any) -> None:
        raise ValueError(f"cannot {msg}")

    app.state.heard = []
    app.state.got_one = None

    @app.broadcast(subject="news.*")
    async def news(_comm: Any, body: Any, sender: Any, subject: Any, _cid: Any) -> None:
        app.state.heard.append((subject, body))
        if app.state.got_one is not None:
            app.state.got_one.set()

    return app


async def test_the_test_client_reaches_every_kind_of_subscriber() -> None:
    app = make_app()
    app.state.got_one = anyio.Event()
    with anyio.fail_after(TIMEOUT):
        async with app.test_client() as client:
            assert app.status == AppStatus("running", True) and app.status.healthy
            assert await (await client.task_queue("double").task_send(21)) == 42
            assert await (await client.task_send(1)) == 101
            assert await (await client.rpc_send("inc", 41)) == 42
            with pytest.raises(RemoteException, match="cannot this"):
                await (await client.rpc_send("fail", "this")).unwrap()
            await client.broadcast_send("skipped", subject="weather.rain")
            await client.broadcast_send("a car", subject="news.car")
            await app.state.got_one.wait()
        assert app.state.heard == [("news.car", "a car")]
        assert app.status == AppStatus("stopped", False) and app.comm is None


async def test_the_same_app_serves_again_after_a_stop() -> None:
    app = make_app()
    with anyio.fail_after(TIMEOUT):
        for _ in range(2):
            async with app.test_client() as client:
                assert await (await client.task_queue("double").task_send(2)) == 4


async def test_decorators_return_the_function_for_unit_tests() -> None:
    app = App()

    @app.task(queue="q")
    async def handler(_comm: Any, n: int) -> int:
        return n * 3

    assert await handler(None, 2) == 6
    assert "1 task, 0 RPC, 0 broadcast subscribers; stopped" in repr(app)


def test_declaration_errors_are_found_at_once() -> None:
    app = App()
    app.task(queue="q", prefetch_count=2)(lambda c, t: t)
    app.task(queue="q")(lambda c, t: t)  # no prefetch given: the queue's stands
    with pytest.raises(ValueError, match="prefetch_count=2 already, not 3"):
        app.task(queue="q", prefetch_count=3)(lambda c, t: t)
    app.rpc("x")(lambda c, m: m)
    with pytest.raises(ValueError, match="declared twice"):
        app.rpc("x")(lambda c, m: m)
    with pytest.raises(ValueError, match="cannot contain"):
        app.rpc("a.*")(lambda c, m: m)
    with pytest.raises(TypeError, match="must be callable"):
        app.broadcast(subject="a")(42)  # type: ignore[type-var]


async def test_hooks_and_lifespan_run_in_order_around_the_handlers() -> None:
    events: list[str] = []

    @asynccontextmanager
    async def lifespan(app: App) -> AsyncIterator[None]:
        events.append("lifespan enter")
        app.state.pool = "pool"
        yield
        events.append("lifespan exit")

    app = App(lifespan=lifespan, drain_timeout=5)

    @app.on_startup
    async def first(comm: kiwi_anyio.Communicator) -> None:
        assert comm is app.comm and comm.is_connected
        events.append(f"startup 1 ({app.state.pool})")

    @app.on_startup
    def second() -> None:
        events.append("startup 2")

    @app.on_shutdown
    async def close_first(comm: kiwi_anyio.Communicator) -> None:
        events.append("shutdown 1")

    @app.on_shutdown
    def close_second() -> None:
        events.append("shutdown 2")

    running = anyio.Event()

    @app.task(queue="slow")
    async def slow(_comm: Any, task: Any) -> str:
        events.append("handler started")
        running.set()
        await anyio.sleep(0.3)
        events.append("handler done")
        return f"{task} done"

    url = memory_url()
    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as tg:
            served = await tg.start(app.serve, url)
            assert served is app.comm and events == [
                "lifespan enter",
                "startup 1 (pool)",
                "startup 2",
            ]
            async with kiwi_anyio.connect(url) as client:
                future = await client.task_queue("slow").task_send("x")
                await running.wait()
                app.stop()  # graceful: the running handler finishes and answers
                assert await future == "x done"
    assert events[3:] == [
        "handler started",
        "handler done",
        "shutdown 2",
        "shutdown 1",
        "lifespan exit",
    ]


async def test_a_stop_after_the_drain_timeout_requeues_the_task() -> None:
    app = App(drain_timeout=0.2)
    runs: list[str] = []

    @app.task(queue="stuck")
    async def stuck(_comm: Any, task: Any) -> str:
        runs.append(task)
        if len(runs) == 1:
            await anyio.sleep_forever()
        return "second run"

    url = memory_url()
    with anyio.fail_after(TIMEOUT):
        async with kiwi_anyio.connect(url) as client:
            async with anyio.create_task_group() as tg:
                await tg.start(app.serve, url)
                future = await client.task_queue("stuck").task_send("t")
                while not runs:
                    await anyio.sleep(0.01)
                app.stop()
            assert app.status.state == "stopped" and not future.done()
            async with anyio.create_task_group() as tg:  # served again: the task is redelivered
                await tg.start(app.serve, url)
                assert await future == "second run"
                app.stop()
    assert runs == ["t", "t"]


async def test_cancelling_serve_stops_at_once_and_runs_the_shutdown_hooks() -> None:
    app = App(drain_timeout=30)
    shut = []
    started = anyio.Event()

    @app.task(queue="forever")
    async def forever(_comm: Any, _task: Any) -> None:
        started.set()
        await anyio.sleep_forever()

    @app.on_shutdown
    async def bye() -> None:
        await anyio.lowlevel.checkpoint()  # shielded: it may await although serve was cancelled
        shut.append("bye")

    url = memory_url()
    with anyio.fail_after(5):  # far below drain_timeout
        async with kiwi_anyio.connect(url) as client, anyio.create_task_group() as tg:
            await tg.start(app.serve, url)
            await client.task_queue("forever").task_send("t")
            await started.wait()
            tg.cancel_scope.cancel()
    assert shut == ["bye"] and app.status.state == "stopped"


async def test_a_failing_startup_hook_fails_the_start_and_shutdown_hooks_still_run() -> None:
    app = App()
    shut = []

    @app.on_startup
    async def broken() -> None:
        raise RuntimeError("no database")

    @app.on_shutdown
    def cleanup() -> None:
        shut.append("cleanup")

    with anyio.fail_after(TIMEOUT), pytest.raises(RuntimeError, match="no database"):
        async with app.test_client():
            pass  # pragma: no cover
    assert shut == ["cleanup"] and app.status.state == "stopped"


async def test_a_stop_during_the_start_abandons_it() -> None:
    app = App()
    subscribed = []

    @app.on_startup
    async def slow_start() -> None:
        app.stop()
        await anyio.sleep(10)

    @app.task(queue="q")
    async def handler(_comm: Any, task: Any) -> None:
        subscribed.append(task)  # pragma: no cover

    with anyio.fail_after(5):
        await app.serve(memory_url())
    assert app.status.state == "stopped"


async def test_serving_twice_at_once_is_refused() -> None:
    app = App()
    with anyio.fail_after(TIMEOUT):
        async with app.test_client():
            with pytest.raises(RuntimeError, match="being served already"):
                await app.serve(memory_url())


async def test_status_listeners_see_the_lifecycle() -> None:
    app = App()
    seen: list[tuple[str, bool]] = []
    app.add_status_listener(lambda status: seen.append((status.state, status.connected)))
    with anyio.fail_after(TIMEOUT):
        async with app.test_client():
            pass
    assert seen == [
        ("starting", False),
        ("starting", True),  # connected
        ("running", True),
        ("stopping", True),
        ("stopping", False),  # the communicator closed
        ("stopped", False),
    ]


async def test_serve_runs_on_a_real_broker_too(broker_url: str) -> None:
    app = make_app()
    with anyio.fail_after(TIMEOUT):
        async with app.test_client(broker_url) as client:  # private exchange names
            assert await (await client.task_queue("double").task_send(5)) == 10
            assert await (await client.rpc_send("inc", 1)) == 2


# --------------------------------------------------------------------------- the plugin's fixture


@pytest.fixture
def kiwi_app() -> App:
    return make_app()


async def test_the_plugin_fixture_serves_the_app(kiwi_app_client: kiwi_anyio.Communicator) -> None:
    with anyio.fail_after(TIMEOUT):
        assert await (await kiwi_app_client.task_queue("double").task_send(4)) == 8
        assert await (await kiwi_app_client.rpc_send("inc", 4)) == 5

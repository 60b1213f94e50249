"""The one-shot signal behind publish confirms, RPC replies and futures (no broker)."""

from __future__ import annotations

import threading

import anyio
import pytest

from kiwi_anyio._signal import Signal, new_signal
from kiwi_anyio.futures import Future

pytestmark = pytest.mark.anyio


async def test_every_waiter_wakes_and_a_cancelled_one_does_not_disturb_them() -> None:
    signal = new_signal()
    woke: list[int] = []

    async def waiter(n: int) -> None:
        await signal.wait()
        woke.append(n)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            for n in range(3):
                tg.start_soon(waiter, n)
            with anyio.CancelScope() as cancelled:
                cancelled.cancel()
                await signal.wait()  # cancelled while the others wait
            await anyio.wait_all_tasks_blocked()
            assert woke == []
            assert not signal.is_set()
            signal.set()
            signal.set()  # idempotent
        assert sorted(woke) == [0, 1, 2]
        assert signal.is_set()
        await signal.wait()  # set: returns at once


async def test_the_first_waiter_cancelled_leaves_a_later_one_waiting() -> None:
    signal = new_signal()
    woke = anyio.Event()

    async def late_waiter() -> None:
        await signal.wait()
        woke.set()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            with anyio.move_on_after(0.01):
                await signal.wait()
            tg.start_soon(late_waiter)
            await anyio.wait_all_tasks_blocked()
            signal.set()
            await woke.wait()


async def test_set_from_another_thread_wakes_the_loop() -> None:
    signal = new_signal()
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(signal.wait)
            await anyio.wait_all_tasks_blocked()
            thread = threading.Thread(target=signal.set_threadsafe)
            thread.start()
        thread.join()
    assert signal.is_set()


async def test_a_future_resolved_from_a_thread_wakes_its_awaiter() -> None:
    future: Future[int] = Future()

    def resolve() -> None:
        future.set_result(42)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:

            async def resolve_soon() -> None:
                await anyio.wait_all_tasks_blocked()
                await anyio.to_thread.run_sync(resolve)

            tg.start_soon(resolve_soon)
            assert await future == 42


def test_set_threadsafe_after_the_loop_ended_raises_runtime_error(anyio_backend: str) -> None:
    async def make() -> Signal:
        return new_signal()

    signal = anyio.run(make, backend=anyio_backend)
    with pytest.raises(RuntimeError):
        signal.set_threadsafe()


def test_a_future_resolved_after_its_loop_ended_does_not_raise(anyio_backend: str) -> None:
    future: Future[int] = Future()

    async def wait_briefly() -> None:
        with anyio.move_on_after(0.01):
            await future.wait()

    anyio.run(wait_briefly, backend=anyio_backend)
    thread = threading.Thread(target=future.set_result, args=(1,))
    thread.start()
    thread.join()
    assert future.result() == 1

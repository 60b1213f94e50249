"""Large bodies are encoded and decoded off the event loop: heartbeats and other
subscribers go on while a big task travels."""

from __future__ import annotations

import time
import uuid
from typing import Any

import anyio
import pytest

import kiwi_anyio
from kiwi_anyio.patterns.bodies import looks_large
from kiwi_anyio.testing.pytest_plugin import private_names

pytestmark = pytest.mark.anyio


def slow_body(n: int = 20000) -> dict[Any, Any]:
    """A body the default codec writes with PyYAML (tuple keys): about a second on the loop."""
    return {(i, "k"): "x" * 20 for i in range(n)}


def test_looks_large_is_cheap_and_right() -> None:
    assert not looks_large({"i": 1, "p": "x" * 64})
    assert not looks_large(({"i": 1}, False))
    assert looks_large("x" * 100_000)
    assert looks_large([{"a": "x" * 100_000}])
    assert looks_large(list(range(5000)))
    assert looks_large((slow_body(3000), False))


async def test_a_large_task_does_not_stall_the_loop() -> None:
    gaps: list[float] = []
    done = anyio.Event()

    async def ticker() -> None:
        last = time.monotonic()
        while not done.is_set():
            await anyio.sleep(0.01)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    body = slow_body()
    start = time.monotonic()
    kiwi_anyio.codecs.YAML.encode((body, False))
    on_loop = time.monotonic() - start  # what encoding it would have stalled the loop for
    async with kiwi_anyio.connect(f"memory://test-{uuid.uuid4().hex}", **private_names()) as comm:
        await comm.add_task_subscriber(lambda _c, task: len(task))
        with anyio.fail_after(120):
            async with anyio.create_task_group() as tg:
                tg.start_soon(ticker)
                await anyio.sleep(0.05)  # the ticker is ticking
                future = await comm.task_send(body)
                assert await future == len(body)
                done.set()
    worst = max(gaps)
    # the encode alone (of four: task and reply, each way) takes longer than the worst gap
    assert on_loop > 0.3, f"the body encodes in {on_loop:.2f} s: too small to tell"
    assert worst < on_loop / 2, f"the loop stalled for {worst:.2f} s (encode {on_loop:.2f} s)"

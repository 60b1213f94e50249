"""Async form of examples/task_worker.py, on trio."""

from typing import Any

import anyio

import kiwi_anyio


async def callback(_comm: Any, body: str) -> bool:
    print(f" [x] Received {body!r}", flush=True)
    await anyio.sleep(body.count(".") * 0.1)
    print(" [x] Done", flush=True)
    return True


async def main() -> None:
    async with kiwi_anyio.connect() as comm:
        queue = comm.task_queue("task_queue", prefetch_count=1)
        async with queue.task_subscriber(callback):
            print(" [*] Waiting for messages. To exit press CTRL+C", flush=True)
            await anyio.sleep_forever()


anyio.run(main, backend="trio")

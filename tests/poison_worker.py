"""A task worker for tests/test_poison.py: doubles numbers; dies (os._exit) on "poison".

``python tests/poison_worker.py URL QUEUE LOG BACKEND [QUEUE_TYPE]``: every delivery of the
poison task appends a line to LOG (flushed and synced) before the process dies, so the test
can count how often it was delivered.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import anyio

import kiwi_anyio


async def main(url: str, queue: str, log: str, queue_type: str | None) -> None:
    options: dict[str, Any] = {"testing_mode": False, "reconnect": False}
    if queue_type:
        options["queue_type"] = queue_type
    async with kiwi_anyio.connect(url, **options) as comm:

        def work(_comm: Any, task: Any) -> Any:
            if task == "poison":
                with open(log, "a") as f:
                    f.write("poison\n")
                    f.flush()
                    os.fsync(f.fileno())
                os._exit(3)
            return task * 2

        await comm.task_queue(queue, max_deliveries=3).add_task_subscriber(work)
        print("ready", flush=True)
        await anyio.sleep_forever()


if __name__ == "__main__":
    url, queue, log, backend = sys.argv[1:5]
    queue_type = sys.argv[5] if len(sys.argv) > 5 else None
    anyio.run(main, url, queue, log, queue_type, backend=backend)

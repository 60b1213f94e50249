"""Async form of examples/task_sender.py (asyncio)."""

import sys

import anyio

import kiwi_anyio


async def main() -> None:
    message = " ".join(sys.argv[1:]) or "Hello World!"
    async with kiwi_anyio.connect() as comm:
        queue = comm.task_queue("task_queue")
        await queue.task_send(message, no_reply=True)  # returns once the broker has it
        print(f" [x] Sent {message!r}", flush=True)


anyio.run(main)

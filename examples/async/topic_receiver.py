"""Async form of examples/topic_receiver.py."""

import sys
from typing import Any

import anyio

import kiwi_anyio


async def callback(_comm: Any, body: Any, _sender: Any, subject: Any, _msg_id: Any) -> None:
    print(f" [x] {subject!r}:{body!r}", flush=True)


async def main() -> None:
    binding_keys = sys.argv[1:]
    if not binding_keys:
        sys.stderr.write(f"Usage: {sys.argv[0]} [binding_key]...\n")
        sys.exit(1)
    async with kiwi_anyio.connect() as comm:
        for binding_key in binding_keys:
            await comm.add_broadcast_subscriber(kiwi_anyio.BroadcastFilter(callback, binding_key))
        print(" [*] Waiting for logs. To exit press CTRL+C", flush=True)
        await anyio.sleep_forever()


anyio.run(main)

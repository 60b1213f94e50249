"""Async form of examples/topic_emitter.py."""

import sys

import anyio

import kiwi_anyio


async def main() -> None:
    message = " ".join(sys.argv[2:]) or "Hello World!"
    subject = sys.argv[1] if len(sys.argv) > 2 else "anonymous.info"
    async with kiwi_anyio.connect() as comm:
        await comm.broadcast_send(message, subject=subject)
        print(f" [x] Sent {subject!r}:{message!r}", flush=True)


anyio.run(main)

"""Async form of examples/rpc_client.py."""

import anyio

import kiwi_anyio


async def main() -> None:
    async with kiwi_anyio.connect() as comm:
        print(" [x] Requesting fib(30)", flush=True)
        response = await (await comm.rpc_send("rpc_queue", 30))
        print(f" [.] Got {response!r}", flush=True)


anyio.run(main)

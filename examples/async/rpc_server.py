"""Async form of examples/rpc_server.py."""

from typing import Any

import anyio

import kiwi_anyio


def fib(n: int) -> int:
    return n if n < 2 else fib(n - 1) + fib(n - 2)


def on_request(_comm: Any, body: Any) -> int:
    # a plain function: kiwi_anyio runs it in a worker thread, the event loop stays free
    n = int(body)
    print(f" [.] fib({n})", flush=True)
    return fib(n)


async def main() -> None:
    async with kiwi_anyio.connect() as comm, comm.rpc_subscriber(on_request, "rpc_queue"):
        print(" [x] Awaiting RPC requests", flush=True)
        await anyio.sleep_forever()


anyio.run(main)

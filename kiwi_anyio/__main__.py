"""The ``kiwi-anyio`` command line (``python -m kiwi_anyio``).

``demo`` starts a task worker, an RPC server and a broadcast listener, sends to each and
prints what happens. The URL comes from ``--url`` or ``KIWI_ANYIO_URL``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import anyio

from . import BroadcastFilter, RemoteException, UnroutableError
from . import connect as kiwi_connect


async def demo(url: str, out: Any = sys.stdout) -> None:
    """Show the three patterns working against the broker at ``url``."""

    def say(text: str) -> None:
        print(text, file=out, flush=True)

    suffix = f"{os.getpid()}.{int(time.time())}"
    options: dict[str, Any] = {
        "message_exchange": f"kiwi-anyio-demo.messages.{suffix}",
        "task_exchange": f"kiwi-anyio-demo.tasks.{suffix}",
        "task_queue": f"kiwi-anyio-demo.tasks.{suffix}",
        "testing_mode": True,
    }
    async with kiwi_connect(url, **options) as comm:
        say(f"connected to {comm.server_properties.get('product')} at {url.split('@')[-1]}")

        def worker(_comm: Any, task: Any) -> Any:
            say(f"  [worker] got task {task!r}")
            return f"{task} done"

        async def fib(_comm: Any, n: int) -> int:
            a, b = 0, 1
            for _ in range(n):
                a, b = b, a + b
            return a

        async def fail(_comm: Any, msg: Any) -> None:
            raise ValueError(f"cannot handle {msg!r}")

        heard = anyio.Event()

        def listener(_comm: Any, body: Any, sender: Any, subject: Any, _cid: Any) -> None:
            say(f"  [listener] {subject} from {sender}: {body!r}")

        async def done_listening(*_: Any) -> None:
            heard.set()

        await comm.add_task_subscriber(worker)
        await comm.add_rpc_subscriber(fib, "fib")
        await comm.add_rpc_subscriber(fail, "fail")
        await comm.add_broadcast_subscriber(BroadcastFilter(listener, subject="kern.*"))
        await comm.add_broadcast_subscriber(BroadcastFilter(done_listening, subject="done"))

        say("tasks:")
        futures = [await comm.task_send(f"task {i}") for i in range(3)]
        for future in futures:
            assert future is not None
            say(f"  result: {await future.wait(30)!r}")
        say("rpc:")
        say(f"  fib(30) = {await (await comm.rpc_send('fib', 30)).wait(30)}")
        try:
            await (await comm.rpc_send("fail", "this")).wait(30)
        except RemoteException as exc:
            say(f"  remote exception: {exc}")
        try:
            await comm.rpc_send("nobody", 1)
        except UnroutableError:
            say("  rpc to 'nobody': UnroutableError (no such subscriber)")
        say("broadcasts (listener filters on 'kern.*'):")
        await comm.broadcast_send("disk full", sender="host1", subject="kern.critical")
        await comm.broadcast_send("backup ran", sender="host1", subject="cron.info")
        await comm.broadcast_send(None, subject="done")
        with anyio.fail_after(30):
            await heard.wait()
        say("done")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``kiwi-anyio`` / ``python -m kiwi_anyio``."""
    parser = argparse.ArgumentParser(prog="kiwi-anyio", description=__doc__)
    parser.add_argument("--url", default=os.environ.get("KIWI_ANYIO_URL"), help="broker URL")
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="show tasks, RPC and broadcasts working")
    args = parser.parse_args(argv)
    url = args.url or os.environ.get("KIWI_ANYIO_TEST_URL") or "amqp://guest:guest@127.0.0.1/"
    if args.command == "demo":
        anyio.run(demo, url, backend=args.backend)
    return 0


if __name__ == "__main__":
    sys.exit(main())

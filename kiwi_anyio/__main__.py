"""The ``kiwi-anyio`` command line (``python -m kiwi_anyio``).

``demo`` starts a task worker, an RPC server and a broadcast listener, sends to each and
prints what happens (on the embedded ``memory://`` broker unless a URL is given). The URL
comes from ``--url`` or ``KIWI_ANYIO_URL``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import anyio
import yaml

from . import BroadcastFilter, KiwiError, RemoteException, UnroutableError
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


def _value(text: str) -> Any:
    """A command-line message: YAML scalars and lists (``30`` is an int), else the text."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


async def _task_send(url: str, args: argparse.Namespace, out: Any) -> int:
    async with kiwi_connect(url) as comm:
        queue = comm.task_queue(args.queue) if args.queue else comm._default_queue()
        future = await queue.task_send(_value(args.task), no_reply=args.no_reply)
        print(f"sent {args.task!r} to {queue.name!r}", file=out, flush=True)
        if future is not None:
            print(f"result: {await future.unwrap(args.timeout)!r}", file=out, flush=True)
    return 0


async def _task_work(url: str, args: argparse.Namespace, out: Any) -> int:
    answer = _value(args.answer) if args.answer is not None else None

    async def work(_comm: Any, task: Any) -> Any:
        print(f"task: {task!r}", file=out, flush=True)
        return answer if args.answer is not None else task

    async with kiwi_connect(url) as comm:
        queue = comm.task_queue(args.queue, prefetch_count=args.prefetch) if args.queue else None
        target = queue or comm._default_queue()
        async with target.task_subscriber(work):
            print(f"working on {target.name!r}; Ctrl-C to stop", file=out, flush=True)
            await anyio.sleep_forever()
    return 0


async def _rpc_call(url: str, args: argparse.Namespace, out: Any) -> int:
    async with kiwi_connect(url) as comm:
        try:
            future = await comm.rpc_send(args.identifier, _value(args.message))
            print(repr(await future.unwrap(args.timeout)), file=out, flush=True)
        except RemoteException as exc:
            print(f"remote exception: {exc}", file=out, flush=True)
            return 1
        except UnroutableError:
            print(f"no RPC subscriber {args.identifier!r}", file=out, flush=True)
            return 1
    return 0


async def _broadcast_send(url: str, args: argparse.Namespace, out: Any) -> int:
    async with kiwi_connect(url) as comm:
        await comm.broadcast_send(_value(args.body), sender=args.sender, subject=args.subject)
        print("sent", file=out, flush=True)
    return 0


async def _listen(url: str, args: argparse.Namespace, out: Any) -> int:
    def show(_comm: Any, body: Any, sender: Any, subject: Any, correlation_id: Any) -> None:
        print(f"{subject} from {sender}: {body!r}", file=out, flush=True)

    async with kiwi_connect(url) as comm:
        listener = BroadcastFilter(show, subject=args.subject, sender=args.sender)
        async with comm.broadcast_subscriber(listener):
            print("listening; Ctrl-C to stop", file=out, flush=True)
            await anyio.sleep_forever()
    return 0


async def _ping(url: str, args: argparse.Namespace, out: Any) -> int:
    start = time.perf_counter()
    async with kiwi_connect(url) as comm:
        connected = time.perf_counter()
        props = comm.server_properties
        print(f"connected to {comm.url} in {(connected - start) * 1000:.1f} ms", file=out)
        for key in ("product", "version", "platform", "cluster_name"):
            if key in props:
                print(f"  {key}: {props[key]}", file=out)
        echo = f"ping-{os.getpid()}-{time.time_ns()}"
        async with comm.rpc_subscriber(lambda _c, m: m, echo):
            sent = time.perf_counter()
            await (await comm.rpc_send(echo, "ping")).wait(10)
            print(f"RPC round trip: {(time.perf_counter() - sent) * 1000:.2f} ms", file=out)
    return 0


async def _demo(url: str, args: argparse.Namespace, out: Any) -> int:
    await demo(url, out)
    return 0


def main(argv: Sequence[str] | None = None, out: Any = None) -> int:
    """Entry point of ``kiwi-anyio`` / ``python -m kiwi_anyio``."""
    out = out or sys.stdout
    parser = argparse.ArgumentParser(prog="kiwi-anyio", description=__doc__)
    parser.add_argument("--url", default=os.environ.get("KIWI_ANYIO_URL"), help="broker URL")
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="show tasks, RPC and broadcasts working").set_defaults(run=_demo)
    task = sub.add_parser("task", help="send or work on tasks")
    task_sub = task.add_subparsers(dest="task_command", required=True)
    send = task_sub.add_parser("send", help="send a task and print its result")
    send.add_argument("task")
    send.add_argument("--queue", help="task queue (default: the communicator's)")
    send.add_argument("--no-reply", action="store_true", help="do not wait for a result")
    send.add_argument("--timeout", type=float, default=None)
    send.set_defaults(run=_task_send)
    work = task_sub.add_parser("work", help="print each task (and answer it)")
    work.add_argument("--queue")
    work.add_argument("--prefetch", type=int, default=1)
    work.add_argument("--answer", help="the result to give (default: the task itself)")
    work.set_defaults(run=_task_work)
    rpc = sub.add_parser("rpc", help="RPC calls")
    rpc_sub = rpc.add_subparsers(dest="rpc_command", required=True)
    call = rpc_sub.add_parser("call", help="call an RPC subscriber and print the reply")
    call.add_argument("identifier")
    call.add_argument("message")
    call.add_argument("--timeout", type=float, default=None)
    call.set_defaults(run=_rpc_call)
    broadcast = sub.add_parser("broadcast", help="broadcasts")
    broadcast_sub = broadcast.add_subparsers(dest="broadcast_command", required=True)
    bsend = broadcast_sub.add_parser("send", help="send a broadcast")
    bsend.add_argument("body")
    bsend.add_argument("--subject")
    bsend.add_argument("--sender")
    bsend.set_defaults(run=_broadcast_send)
    listen = sub.add_parser("listen", help="print broadcasts (filters with * wildcards)")
    listen.add_argument("--subject")
    listen.add_argument("--sender")
    listen.set_defaults(run=_listen)
    sub.add_parser("ping", help="connect, show the broker, time an RPC").set_defaults(run=_ping)
    args = parser.parse_args(argv)
    default = "memory://demo" if args.command == "demo" else "amqp://guest:guest@127.0.0.1/"
    url = args.url or default
    try:
        return int(anyio.run(args.run, url, args, out, backend=args.backend))
    except KeyboardInterrupt:
        return 130
    except KiwiError as exc:
        print(f"kiwi-anyio: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

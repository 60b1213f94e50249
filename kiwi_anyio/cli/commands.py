"""The message commands: task send/work/dead-letters, rpc call, broadcast send, listen,
ping and demo.

Each command is ``async def command(url, args, out) -> exit code``, run by
:func:`kiwi_anyio.cli.main` in ``anyio.run``; it raises what it cannot handle (``main`` turns
the exception into an exit code). This module owns what the commands send and print; it must
not build the parser, choose exit codes for exceptions, or serve an App (that is
:mod:`kiwi_anyio.cli.worker`).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import anyio
import sniffio

from .. import BroadcastFilter, Communicator, RemoteException, UnroutableError
from .. import connect as kiwi_connect
from .output import EXIT_OK, Output, parse_message
from .progress import Counts, count_failures, report_every, report_interval


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
        say(
            f"connected to {comm.server_properties.get('product')} at {url.split('@')[-1]}"
            f" (running on {sniffio.current_async_library()})"
        )

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


def _message(args: argparse.Namespace, name: str) -> Any:
    return parse_message(getattr(args, name), getattr(args, "parse", "yaml"))


async def task_send(url: str, args: argparse.Namespace, show: Output) -> int:
    """``task send``: send a task and print its result (unless --no-reply)."""
    task = _message(args, "task")
    async with kiwi_connect(url) as comm:
        queue = comm.task_queue(args.queue) if args.queue else comm._default_queue()
        future = await queue.task_send(task, no_reply=args.no_reply)
        show.status(f"sent {task!r} to {queue.name!r}")
        if future is not None:
            result = await future.unwrap(args.timeout)
            show.data(f"result: {result!r}", result=result)
    return EXIT_OK


async def task_work(url: str, args: argparse.Namespace, show: Output) -> int:
    """``task work``: print each task and answer it until cancelled (Ctrl-C)."""
    answer = _message(args, "answer") if args.answer is not None else None
    counts: Counts = args.counts

    async def work(_comm: Any, task: Any) -> Any:
        show.data(f"task: {task!r}", task=task)
        counts.handled += 1
        return answer if args.answer is not None else task

    async with kiwi_connect(url) as comm:
        queue = comm.task_queue(args.queue, prefetch_count=args.prefetch) if args.queue else None
        target = queue or comm._default_queue()
        await _serve_counted(
            comm,
            args,
            show,
            f"task queue {target.name!r}",
            lambda: target.task_subscriber(work),
            f"working on {target.name!r}; Ctrl-C to stop",
        )
    return EXIT_OK


async def _serve_counted(
    comm: Communicator,
    args: argparse.Namespace,
    show: Output,
    consumer: str,
    subscribe: Callable[[], AbstractAsyncContextManager[Any]],
    started: str,
) -> None:
    """Subscribe (failures of ``consumer`` counted in ``args.counts``), say ``started`` and
    report the counts until cancelled."""
    counts: Counts = args.counts
    comm.hooks.add_delivery_middleware(count_failures(counts, consumer))
    every = report_interval(args.report_every, show.terminal)
    async with subscribe(), anyio.create_task_group() as tg:
        counts.start()
        tg.start_soon(report_every, counts, show, every)
        show.status(started)
        await anyio.sleep_forever()


async def task_dead_letters(url: str, args: argparse.Namespace, show: Output) -> int:
    """``task dead-letters``: list, requeue (--requeue) or purge (--purge) them."""
    async with kiwi_connect(url) as comm:
        queue = comm.task_queue(args.queue) if args.queue else comm._default_queue()
        if args.requeue:
            moved = await queue.requeue_dead_letters()
            show.data(f"requeued {moved} dead letters to {queue.name!r}", requeued=moved)
        elif args.purge:
            purged = await queue.purge_dead_letters()
            show.data(f"purged {purged} dead letters of {queue.name!r}", purged=purged)
        else:
            dead = await queue.dead_letters()
            for letter in dead:
                show.data(
                    f"{letter.message_id}: {letter.task!r} ({letter.deliveries} deliveries, "
                    f"{letter.reason}; set aside by {letter.worker})",
                    message_id=letter.message_id,
                    task=letter.task,
                    deliveries=letter.deliveries,
                    reason=letter.reason,
                    worker=letter.worker,
                )
            show.status(f"{len(dead)} dead letters in {queue.dead_letter_queue!r}")
    return EXIT_OK


async def rpc_call(url: str, args: argparse.Namespace, show: Output) -> int:
    """``rpc call``: send a message to an RPC subscriber and print the reply."""
    message = _message(args, "message")
    async with kiwi_connect(url) as comm:
        future = await comm.rpc_send(args.identifier, message)
        result = await future.unwrap(args.timeout)
        show.data(repr(result), result=result)
    return EXIT_OK


async def broadcast_send(url: str, args: argparse.Namespace, show: Output) -> int:
    """``broadcast send``: send one broadcast."""
    body = _message(args, "body")
    async with kiwi_connect(url) as comm:
        await comm.broadcast_send(body, sender=args.sender, subject=args.subject)
        show.status(f"sent {body!r}")
    return EXIT_OK


async def listen(url: str, args: argparse.Namespace, show: Output) -> int:
    """``listen``: print the broadcasts that match until cancelled (Ctrl-C)."""
    counts: Counts = args.counts

    async def heard(_comm: Any, body: Any, sender: Any, subject: Any, correlation_id: Any) -> None:
        show.data(
            f"{subject} from {sender}: {body!r}",
            subject=subject,
            sender=sender,
            body=body,
            correlation_id=correlation_id,
        )
        counts.handled += 1

    async with kiwi_connect(url) as comm:
        listener = BroadcastFilter(heard, subject=args.subject, sender=args.sender)
        await _serve_counted(
            comm,
            args,
            show,
            "broadcasts",
            lambda: comm.broadcast_subscriber(listener),
            "listening; Ctrl-C to stop",
        )
    return EXIT_OK


async def ping(url: str, args: argparse.Namespace, show: Output) -> int:
    """``ping``: connect, print the broker's properties and the time of one RPC."""
    start = time.perf_counter()
    async with kiwi_connect(url) as comm:
        connected = (time.perf_counter() - start) * 1000
        props = comm.server_properties
        server = {
            k: props[k] for k in ("product", "version", "platform", "cluster_name") if k in props
        }
        echo = f"ping-{os.getpid()}-{time.time_ns()}"
        async with comm.rpc_subscriber(lambda _c, m: m, echo):
            sent = time.perf_counter()
            await (await comm.rpc_send(echo, "ping")).wait(10)
            rpc = (time.perf_counter() - sent) * 1000
        if show.jsonl:
            show.data(
                "", url=comm.url, connect_ms=round(connected, 2), rpc_ms=round(rpc, 3), **server
            )
        else:
            show.data(f"connected to {comm.url} in {connected:.1f} ms")
            for key, value in server.items():
                show.data(f"  {key}: {value}")
            show.data(f"RPC round trip: {rpc:.2f} ms")
    return EXIT_OK


async def run_demo(url: str, args: argparse.Namespace, show: Output) -> int:
    """``demo``: see :func:`demo`."""
    await demo(url, show.out)
    return EXIT_OK

# mypy: ignore-errors
"""kiwiPy 0.9's benchmark client (runs in ``.venv-kiwipy``: kiwiPy pins pamqp 3).

``params["flavour"]`` is ``thread`` (``RmqThreadCommunicator``, what AiiDA uses) or
``asyncio`` (``RmqCommunicator`` from ``kiwipy.rmq.async_connect``). Workloads: tasks,
rpc_seq, rpc_par, broadcast. The thread communicator confirms each send before it returns,
so "N in flight" there means N results outstanding with sends one at a time, which is how
it can be used.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import sys
import threading
import time

import kiwipy
import kiwipy.rmq
from bench_common import Meter, Unsupported, latency_metrics, main, unique


def _encode(obj):
    return json.dumps(obj).encode()


def _options(params, tag, **extra):
    codec = params.get("codec", "yaml")
    options = {
        "message_exchange": f"bench-{tag}.messages",
        "task_exchange": f"bench-{tag}.tasks",
        "task_queue": f"bench-{tag}.tasks",
        **extra,
    }
    if codec == "json":
        options.update(encoder=_encode, decoder=json.loads)
    return options


# ---------------------------------------------------------------- RmqThreadCommunicator


def _thread_comm(url, params, tag, **extra):
    return kiwipy.rmq.RmqThreadCommunicator.connect(
        connection_params={"url": url}, **_options(params, tag, **extra)
    )


def _window(n, inflight, send, budget=float("inf")):
    """Keep ``inflight`` results outstanding, sending one at a time; returns latencies."""
    latencies = []
    outstanding = {}
    sent = 0
    deadline = time.perf_counter() + budget
    while sent < n or outstanding:
        while sent < n and len(outstanding) < inflight and time.perf_counter() < deadline:
            sent += 1
            t0 = time.perf_counter()
            outstanding[send(sent)] = t0
        if not outstanding:
            break
        done, _ = concurrent.futures.wait(
            list(outstanding), return_when=concurrent.futures.FIRST_COMPLETED
        )
        now = time.perf_counter()
        for future in done:
            future.result()
            latencies.append(now - outstanding.pop(future))
    return latencies


def _thread_echo(comm, msg):
    return msg


def thread_tasks(url, params):
    comm = _thread_comm(url, params, unique("tasks"), task_prefetch_count=params["prefetch"])
    try:
        comm.add_task_subscriber(_thread_echo)
        for i in range(10):
            comm.task_send(i).result()
        with Meter() as m:
            latencies = _window(params["n"], params["inflight"], comm.task_send)
    finally:
        comm.close()
    return {**m.metrics(len(latencies)), **latency_metrics(latencies)}


def thread_rpc(url, params, inflight):
    comm = _thread_comm(url, params, unique("rpc"))
    try:
        comm.add_rpc_subscriber(_thread_echo, "echo")
        for i in range(10):
            comm.rpc_send("echo", i).result()
        with Meter() as m:
            latencies = _window(
                params["n"],
                inflight,
                lambda i: comm.rpc_send("echo", i),
                params.get("budget", float("inf")),
            )
    finally:
        comm.close()
    return {**m.metrics(len(latencies)), **latency_metrics(latencies)}


def thread_broadcast(url, params):
    n, subscribers = params["n"], params["subscribers"]
    tag = unique("bcast")
    hits = (n + 1) // 2
    counts = [0] * subscribers
    lock = threading.Lock()
    finished = [0]
    all_done = threading.Event()

    def make(index):
        def on_broadcast(comm, body, sender, subject, cid):
            counts[index] += 1
            if counts[index] == hits:
                with lock:
                    finished[0] += 1
                    if finished[0] == subscribers:
                        all_done.set()

        return on_broadcast

    sender = _thread_comm(url, params, tag)
    receivers = []
    try:
        for index in range(subscribers):
            comm = _thread_comm(url, params, tag)
            receivers.append(comm)
            comm.add_broadcast_subscriber(kiwipy.BroadcastFilter(make(index), subject="bench.hit"))
        with Meter() as m:
            for i in range(n):
                subject = "bench.hit" if i % 2 == 0 else "bench.miss"
                sender.broadcast_send({"i": i}, sender="bench", subject=subject)
            if not all_done.wait(params.get("timeout", 120)):
                raise TimeoutError(f"broadcasts not all received: {counts} of {hits}")
    finally:
        for comm in receivers:
            comm.close()
        sender.close()
    metrics = m.metrics(n)
    metrics["deliveries_per_s"] = hits * subscribers / m.seconds
    return metrics


# ---------------------------------------------------------------- RmqCommunicator (asyncio)


async def _async_comm(url, params, tag, **extra):
    return await kiwipy.rmq.async_connect(
        connection_params={"url": url}, **_options(params, tag, **extra)
    )


async def _async_echo(comm, msg):
    return msg


async def _workers(count, worker):
    await asyncio.gather(*(worker() for _ in range(count)))


async def async_tasks(url, params):
    n, inflight = params["n"], params["inflight"]
    comm = await _async_comm(url, params, unique("tasks"), task_prefetch_count=params["prefetch"])
    latencies = []
    try:
        await comm.add_task_subscriber(_async_echo)
        for i in range(10):
            await (await comm.task_send(i))
        sent = 0

        async def sender():
            nonlocal sent
            while sent < n:
                sent += 1
                t0 = time.perf_counter()
                await (await comm.task_send(sent))
                latencies.append(time.perf_counter() - t0)

        with Meter() as m:
            await _workers(inflight, sender)
    finally:
        await comm.disconnect()
    return {**m.metrics(len(latencies)), **latency_metrics(latencies)}


async def async_rpc(url, params, inflight):
    n = params["n"]
    comm = await _async_comm(url, params, unique("rpc"))
    latencies = []
    deadline = time.perf_counter() + params.get("budget", float("inf"))
    try:
        await comm.add_rpc_subscriber(_async_echo, "echo")
        for i in range(10):
            await (await comm.rpc_send("echo", i))
        sent = 0

        async def sender():
            nonlocal sent
            while sent < n and time.perf_counter() < deadline:
                sent += 1
                t0 = time.perf_counter()
                await (await comm.rpc_send("echo", sent))
                latencies.append(time.perf_counter() - t0)

        with Meter() as m:
            await _workers(inflight, sender)
    finally:
        await comm.disconnect()
    return {**m.metrics(len(latencies)), **latency_metrics(latencies)}


async def async_broadcast(url, params):
    n, subscribers, inflight = params["n"], params["subscribers"], params["inflight"]
    tag = unique("bcast")
    hits = (n + 1) // 2
    counts = [0] * subscribers
    finished = [0]
    all_done = asyncio.Event()

    def make(index):
        def on_broadcast(comm, body, sender, subject, cid):
            counts[index] += 1
            if counts[index] == hits:
                finished[0] += 1
                if finished[0] == subscribers:
                    all_done.set()

        return on_broadcast

    sender_comm = await _async_comm(url, params, tag)
    receivers = []
    try:
        for index in range(subscribers):
            comm = await _async_comm(url, params, tag)
            receivers.append(comm)
            await comm.add_broadcast_subscriber(
                kiwipy.BroadcastFilter(make(index), subject="bench.hit")
            )
        sent = 0

        async def send():
            nonlocal sent
            while sent < n:
                subject = "bench.hit" if sent % 2 == 0 else "bench.miss"
                sent += 1
                await sender_comm.broadcast_send({"i": sent}, sender="bench", subject=subject)

        with Meter() as m:
            await _workers(inflight, send)
            await asyncio.wait_for(all_done.wait(), params.get("timeout", 120))
    finally:
        for comm in receivers:
            await comm.disconnect()
        await sender_comm.disconnect()
    metrics = m.metrics(n)
    metrics["deliveries_per_s"] = hits * subscribers / m.seconds
    return metrics


def run(workload, url, params):
    flavour = params.get("flavour", "thread")
    if flavour == "thread":
        table = {
            "tasks": lambda: thread_tasks(url, params),
            "rpc_seq": lambda: thread_rpc(url, params, 1),
            "rpc_par": lambda: thread_rpc(url, params, params.get("inflight", 1)),
            "broadcast": lambda: thread_broadcast(url, params),
        }
    else:
        table = {
            "tasks": lambda: asyncio.run(async_tasks(url, params)),
            "rpc_seq": lambda: asyncio.run(async_rpc(url, params, 1)),
            "rpc_par": lambda: asyncio.run(async_rpc(url, params, params.get("inflight", 1))),
            "broadcast": lambda: asyncio.run(async_broadcast(url, params)),
        }
    if workload not in table:
        raise Unsupported(f"kiwiPy is a communicator: no raw {workload}")
    result = table[workload]()
    result["kiwipy"] = kiwipy.__version__
    return result


if __name__ == "__main__":
    sys.exit(main(run))

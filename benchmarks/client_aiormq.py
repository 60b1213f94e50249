# mypy: ignore-errors
"""aiormq's benchmark client (asyncio, the raw AMQP layer under aio-pika; ``.venv-bench``).

Workloads: publish, consume, large.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import sys
import time

import aiormq
from aiormq.abc import DeliveredMessage
from bench_common import Meter, Unsupported, body_of, main, unique
from pamqp.commands import Basic


async def _workers(count, worker):
    await asyncio.gather(*(worker() for _ in range(count)))


async def _publish_many(ch, queue, n, body, inflight, props, deadline=float("inf")):
    sent = 0
    done = 0

    async def worker():
        nonlocal sent, done
        while sent < n and time.perf_counter() < deadline:
            sent += 1
            await ch.basic_publish(body, routing_key=queue, properties=props)
            done += 1

    await _workers(min(inflight, n), worker)
    return done


async def _consume_n(ch, queue, n):
    count = 0
    finished = asyncio.Event()

    async def on_message(message: DeliveredMessage):
        nonlocal count
        await message.channel.basic_ack(message.delivery.delivery_tag)
        count += 1
        if count >= n:
            finished.set()

    ok = await ch.basic_consume(queue, on_message)
    await finished.wait()
    await ch.basic_cancel(ok.consumer_tag)


async def publish(url, params):
    n, inflight = params["n"], params["inflight"]
    body = body_of(params.get("size", 100))
    props = Basic.Properties(delivery_mode=2)
    queue = unique("pub")
    conn = await aiormq.connect(url)
    try:
        ch = await conn.channel()
        await ch.queue_declare(queue, durable=True)
        await _publish_many(ch, queue, min(200, n), body, inflight, props)
        await ch.queue_purge(queue)
        deadline = time.perf_counter() + params.get("budget", 1e9)
        with Meter() as m:
            done = await _publish_many(ch, queue, n, body, inflight, props, deadline)
        await ch.queue_delete(queue)
    finally:
        await conn.close()
    return m.metrics(done)


async def consume(url, params):
    n, prefetch = params["n"], params["prefetch"]
    body = body_of(params.get("size", 100))
    queue = unique("con")
    conn = await aiormq.connect(url)
    try:
        ch = await conn.channel()
        await ch.queue_declare(queue, durable=True)
        await _publish_many(ch, queue, n, body, 200, Basic.Properties(delivery_mode=2))
        ch2 = await conn.channel()
        await ch2.basic_qos(prefetch_count=prefetch)
        with Meter() as m:
            await _consume_n(ch2, queue, n)
        await ch.queue_delete(queue)
    finally:
        await conn.close()
    return m.metrics(n)


async def large(url, params):
    n, size, inflight, prefetch = (
        params["n"],
        params["size"],
        params["inflight"],
        params["prefetch"],
    )
    body = body_of(size)
    queue = unique("large")
    conn = await aiormq.connect(url)
    try:
        ch = await conn.channel()
        await ch.queue_declare(queue)
        with Meter() as pub:
            await _publish_many(ch, queue, n, body, inflight, Basic.Properties(delivery_mode=1))
        ch2 = await conn.channel()
        await ch2.basic_qos(prefetch_count=prefetch)
        with Meter() as con:
            await _consume_n(ch2, queue, n)
        await ch.queue_delete(queue)
    finally:
        await conn.close()
    return {**pub.metrics(n, "pub_", size), **con.metrics(n, "con_", size)}


def run(workload, url, params):
    table = {"publish": publish, "consume": consume, "large": large}
    if workload not in table:
        raise Unsupported(f"aiormq: no {workload} equivalent (see aio-pika)")
    result = asyncio.run(table[workload](url, params))
    result["aiormq"] = importlib.metadata.version("aiormq")
    return result


if __name__ == "__main__":
    sys.exit(main(run))

# mypy: ignore-errors
"""aio-pika's benchmark client (asyncio; ``.venv-bench``).

Workloads: publish, consume, large, and hand-written equivalents of the communicator
workloads (tasks, rpc_seq, rpc_par, broadcast) built the way an aio-pika user would: a
persistent publish with ``reply_to`` and ``correlation_id``, a worker that answers and acks,
a future per correlation id, JSON bodies like the kiwi clients'. They do less than a
communicator (no exception or pending replies, no kiwiPy wire format), so they are a floor
for what an application on aio-pika would spend.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid

import aio_pika
from aio_pika import DeliveryMode, ExchangeType, Message
from bench_common import Meter, Unsupported, body_of, latency_metrics, main, unique


async def _workers(count, worker):
    await asyncio.gather(*(worker() for _ in range(count)))


async def _publish_many(exchange, routing_key, n, body, inflight, delivery_mode, deadline=None):
    sent = 0
    done = 0
    deadline = deadline or float("inf")

    async def worker():
        nonlocal sent, done
        while sent < n and time.perf_counter() < deadline:
            sent += 1
            await exchange.publish(
                Message(body, delivery_mode=delivery_mode), routing_key=routing_key
            )
            done += 1

    await _workers(min(inflight, n), worker)
    return done


async def _consume_n(queue, n):
    count = 0
    async with queue.iterator() as it:
        async for message in it:
            await message.ack()
            count += 1
            if count >= n:
                break


async def publish(url, params):
    n, inflight = params["n"], params["inflight"]
    body = body_of(params.get("size", 100))
    name = unique("pub")
    async with await aio_pika.connect(url) as conn:
        ch = await conn.channel()
        queue = await ch.declare_queue(name, durable=True)
        ex = ch.default_exchange
        await _publish_many(ex, name, min(200, n), body, inflight, DeliveryMode.PERSISTENT)
        await queue.purge()
        deadline = time.perf_counter() + params.get("budget", 1e9)
        with Meter() as m:
            done = await _publish_many(
                ex, name, n, body, inflight, DeliveryMode.PERSISTENT, deadline
            )
        await queue.delete(if_unused=False, if_empty=False)
    return m.metrics(done)


async def consume(url, params):
    n, prefetch = params["n"], params["prefetch"]
    body = body_of(params.get("size", 100))
    name = unique("con")
    async with await aio_pika.connect(url) as conn:
        ch = await conn.channel()
        await ch.declare_queue(name, durable=True)
        await _publish_many(ch.default_exchange, name, n, body, 200, DeliveryMode.PERSISTENT)
        ch2 = await conn.channel()
        await ch2.set_qos(prefetch_count=prefetch)
        queue = await ch2.declare_queue(name, durable=True, passive=True)
        with Meter() as m:
            await _consume_n(queue, n)
        await queue.delete(if_unused=False, if_empty=False)
    return m.metrics(n)


async def large(url, params):
    n, size, inflight, prefetch = (
        params["n"],
        params["size"],
        params["inflight"],
        params["prefetch"],
    )
    body = body_of(size)
    name = unique("large")
    async with await aio_pika.connect(url) as conn:
        ch = await conn.channel()
        await ch.declare_queue(name)
        with Meter() as pub:
            await _publish_many(
                ch.default_exchange, name, n, body, inflight, DeliveryMode.NOT_PERSISTENT
            )
        ch2 = await conn.channel()
        await ch2.set_qos(prefetch_count=prefetch)
        queue = await ch2.declare_queue(name, passive=True)
        with Meter() as con:
            await _consume_n(queue, n)
        await queue.delete(if_unused=False, if_empty=False)
    return {**pub.metrics(n, "pub_", size), **con.metrics(n, "con_", size)}


class _Requester:
    """Publish requests with reply_to + correlation_id; resolve futures from replies."""

    def __init__(self, channel, reply_queue, exchange, persistent):
        self.channel = channel
        self.reply_queue = reply_queue
        self.exchange = exchange
        self.mode = DeliveryMode.PERSISTENT if persistent else DeliveryMode.NOT_PERSISTENT
        self.futures = {}

    async def start(self):
        await self.reply_queue.consume(self._on_reply, no_ack=True)

    async def _on_reply(self, message):
        future = self.futures.pop(message.correlation_id, None)
        if future is not None and not future.done():
            future.set_result(json.loads(message.body)["result"])

    async def call(self, routing_key, payload):
        cid = uuid.uuid4().hex
        future = asyncio.get_running_loop().create_future()
        self.futures[cid] = future
        await self.exchange.publish(
            Message(
                json.dumps(payload).encode(),
                content_type="application/json",
                delivery_mode=self.mode,
                correlation_id=cid,
                reply_to=self.reply_queue.name,
                message_id=uuid.uuid4().hex,
            ),
            routing_key=routing_key,
            mandatory=True,
        )
        return await future


async def _serve(channel, queue, unwrap):
    """A worker: decode, answer to reply_to, ack."""
    exchange = channel.default_exchange

    async def on_request(message):
        value = unwrap(json.loads(message.body))
        await exchange.publish(
            Message(
                json.dumps({"result": value}).encode(),
                content_type="application/json",
                correlation_id=message.correlation_id,
            ),
            routing_key=message.reply_to,
            mandatory=False,
        )
        await message.ack()

    await queue.consume(on_request)


async def _round_trips(url, params, inflight, persistent, unwrap, wrap):
    n = params["n"]
    latencies = []
    async with await aio_pika.connect(url) as conn:
        worker_ch = await conn.channel()
        await worker_ch.set_qos(prefetch_count=params.get("prefetch", 100))
        name = unique("work")
        work_queue = await worker_ch.declare_queue(
            name, durable=persistent, exclusive=not persistent, auto_delete=not persistent
        )
        await _serve(worker_ch, work_queue, unwrap)
        pub_ch = await conn.channel()
        reply_ch = await conn.channel()
        reply_queue = await reply_ch.declare_queue(exclusive=True)
        requester = _Requester(pub_ch, reply_queue, pub_ch.default_exchange, persistent)
        await requester.start()
        for i in range(10):
            await requester.call(name, wrap(i))
        deadline = time.perf_counter() + params.get("budget", float("inf"))
        sent = 0

        async def sender():
            nonlocal sent
            while sent < n and time.perf_counter() < deadline:
                sent += 1
                t0 = time.perf_counter()
                await requester.call(name, wrap(sent))
                latencies.append(time.perf_counter() - t0)

        with Meter() as m:
            await _workers(inflight, sender)
        if persistent:
            await worker_ch.close()
            await pub_ch.queue_delete(name)
    return {**m.metrics(len(latencies)), **latency_metrics(latencies)}


async def broadcast(url, params):
    n, subscribers, inflight = params["n"], params["subscribers"], params["inflight"]
    hits = (n + 1) // 2
    counts = [0] * subscribers
    finished = [0]
    all_done = asyncio.Event()
    exchange_name = unique("bcast")
    connections = []

    def make(index):
        async def on_message(message):
            data = json.loads(message.body)
            if data["subject"] == "bench.hit":
                counts[index] += 1
                if counts[index] == hits:
                    finished[0] += 1
                    if finished[0] == subscribers:
                        all_done.set()
            await message.ack()

        return on_message

    try:
        sender = await aio_pika.connect(url)
        connections.append(sender)
        ch = await sender.channel()
        exchange = await ch.declare_exchange(exchange_name, ExchangeType.TOPIC, auto_delete=True)
        for index in range(subscribers):
            conn = await aio_pika.connect(url)
            connections.append(conn)
            rch = await conn.channel()
            queue = await rch.declare_queue(exclusive=True)
            await queue.bind(exchange_name, routing_key="[broadcast]")
            await queue.consume(make(index))
        sent = 0

        async def send():
            nonlocal sent
            while sent < n:
                subject = "bench.hit" if sent % 2 == 0 else "bench.miss"
                sent += 1
                body = {"body": {"i": sent}, "sender": "bench", "subject": subject}
                await exchange.publish(
                    Message(json.dumps(body).encode(), content_type="application/json"),
                    routing_key="[broadcast]",
                    mandatory=False,
                )

        with Meter() as m:
            await _workers(inflight, send)
            await asyncio.wait_for(all_done.wait(), params.get("timeout", 120))
    finally:
        for conn in reversed(connections):
            await conn.close()
    metrics = m.metrics(n)
    metrics["deliveries_per_s"] = hits * subscribers / m.seconds
    return metrics


def run(workload, url, params):
    table = {
        "publish": lambda: publish(url, params),
        "consume": lambda: consume(url, params),
        "large": lambda: large(url, params),
        "tasks": lambda: _round_trips(
            url, params, params["inflight"], True, lambda body: body[0], lambda i: [i, False]
        ),
        "rpc_seq": lambda: _round_trips(url, params, 1, False, lambda b: b, lambda i: i),
        "rpc_par": lambda: _round_trips(
            url, params, params["inflight"], False, lambda b: b, lambda i: i
        ),
        "broadcast": lambda: broadcast(url, params),
    }
    if workload not in table:
        raise Unsupported(workload)
    backend = params.get("backend", "asyncio")
    if backend == "uvloop":
        import uvloop

        result = uvloop.run(table[workload]())
    else:
        result = asyncio.run(table[workload]())
    result["aio_pika"] = aio_pika.__version__
    return result


if __name__ == "__main__":
    sys.exit(main(run))

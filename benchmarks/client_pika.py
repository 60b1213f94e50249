# mypy: ignore-errors
"""pika's benchmark client (``BlockingConnection``; ``.venv-bench``).

Workloads: publish (one in flight only: a ``BlockingChannel`` in confirm mode waits for each
confirm inside ``basic_publish``), consume, large.
"""

from __future__ import annotations

import sys
import time

import pika
from bench_common import Meter, Unsupported, body_of, main, unique


def _connect(url):
    return pika.BlockingConnection(pika.URLParameters(url))


def _prefill(conn, queue, n, body, delivery_mode, durable):
    """Fill ``queue`` quickly (no confirms) and wait until the broker has all of it."""
    ch = conn.channel()
    props = pika.BasicProperties(delivery_mode=delivery_mode)
    for _ in range(n):
        ch.basic_publish("", queue, body, props)
    deadline = time.monotonic() + 60
    while ch.queue_declare(queue, durable=durable, passive=True).method.message_count < n:
        if time.monotonic() > deadline:
            raise TimeoutError("prefill did not arrive")
        conn.sleep(0.01)
    ch.close()


def _consume_n(ch, queue, n):
    for count, (method, _props, _body) in enumerate(ch.consume(queue), 1):
        ch.basic_ack(method.delivery_tag)
        if count >= n:
            break
    ch.cancel()


def publish(url, params):
    n, inflight = params["n"], params["inflight"]
    if inflight != 1:
        raise Unsupported("BlockingConnection confirms one publish at a time")
    body = body_of(params.get("size", 100))
    queue = unique("pub")
    props = pika.BasicProperties(delivery_mode=2)
    conn = _connect(url)
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        ch.queue_declare(queue, durable=True)
        for _ in range(min(200, n)):
            ch.basic_publish("", queue, body, props)
        ch.queue_purge(queue)
        deadline = time.perf_counter() + params.get("budget", 1e9)
        done = 0
        with Meter() as m:
            while done < n and time.perf_counter() < deadline:
                ch.basic_publish("", queue, body, props)
                done += 1
        ch.queue_delete(queue)
    finally:
        conn.close()
    return m.metrics(done)


def consume(url, params):
    n, prefetch = params["n"], params["prefetch"]
    body = body_of(params.get("size", 100))
    queue = unique("con")
    conn = _connect(url)
    try:
        setup = conn.channel()
        setup.queue_declare(queue, durable=True)
        _prefill(conn, queue, n, body, 2, True)
        ch = conn.channel()
        ch.basic_qos(prefetch_count=prefetch)
        with Meter() as m:
            _consume_n(ch, queue, n)
        setup.queue_delete(queue)
    finally:
        conn.close()
    return m.metrics(n)


def large(url, params):
    n, size, prefetch = params["n"], params["size"], params["prefetch"]
    body = body_of(size)
    queue = unique("large")
    props = pika.BasicProperties(delivery_mode=1)
    conn = _connect(url)
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        ch.queue_declare(queue)
        with Meter() as pub:
            for _ in range(n):
                ch.basic_publish("", queue, body, props)
        ch2 = conn.channel()
        ch2.basic_qos(prefetch_count=prefetch)
        with Meter() as con:
            _consume_n(ch2, queue, n)
        ch.queue_delete(queue)
    finally:
        conn.close()
    return {**pub.metrics(n, "pub_", size), **con.metrics(n, "con_", size)}


def run(workload, url, params):
    table = {"publish": publish, "consume": consume, "large": large}
    if workload not in table:
        raise Unsupported(f"pika: no {workload} equivalent")
    result = table[workload](url, params)
    result["pika"] = pika.__version__
    return result


if __name__ == "__main__":
    sys.exit(main(run))

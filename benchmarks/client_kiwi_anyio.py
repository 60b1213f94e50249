"""kiwi_anyio's benchmark client: every workload, on asyncio, asyncio+uvloop or trio.

``python client_kiwi_anyio.py WORKLOAD URL PARAMS_JSON``; ``params["backend"]`` is
``asyncio`` (default), ``uvloop`` or ``trio``. See :mod:`bench_common` for the protocol.
"""

from __future__ import annotations

import gc
import importlib.util
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import anyio
import sniffio
from bench_common import (
    Meter,
    Unsupported,
    body_of,
    latency_metrics,
    main,
    percentile,
    progress,
    rss_bytes,
    unique,
)
from bench_proxy import forwarder

import kiwi_anyio
from kiwi_anyio import codecs
from kiwi_anyio.protocol import Channel, Properties, connect

Params = dict[str, Any]


def _codec(params: Params) -> codecs.Codec:
    return {"json": codecs.JSON, "yaml": codecs.YAML}[params.get("codec", "yaml")]


async def _run_workers(count: int, worker: Callable[[], Coroutine[Any, Any, None]]) -> None:
    async with anyio.create_task_group() as tg:
        for _ in range(count):
            tg.start_soon(worker)


async def _publish_many(
    ch: Channel,
    queue: str,
    n: int,
    body: bytes,
    inflight: int,
    props: Properties,
    deadline: float = float("inf"),
) -> int:
    """Publish ``n`` messages with ``inflight`` confirms outstanding; returns how many."""
    sent = 0
    done = 0

    async def worker() -> None:
        nonlocal sent, done
        while sent < n and time.perf_counter() < deadline:
            sent += 1
            await ch.basic_publish(body, routing_key=queue, properties=props)
            done += 1

    await _run_workers(min(inflight, n), worker)
    return done


async def _consume_n(ch: Channel, queue: str, n: int) -> None:
    count = 0
    async with ch.basic_consume(queue) as consumer:
        async for message in consumer:
            message.ack()
            count += 1
            if count >= n:
                break


# ---------------------------------------------------------------- protocol-level workloads


async def publish(url: str, params: Params) -> dict[str, Any]:
    n, inflight = params["n"], params["inflight"]
    body = body_of(params.get("size", 100))
    props = Properties(delivery_mode=2)
    queue = unique("pub")
    async with connect(url) as conn, conn.channel(publisher_confirms=True) as ch:
        await ch.queue_declare(queue, durable=True)
        await _publish_many(ch, queue, min(200, n), body, inflight, props)  # warm-up
        await ch.queue_purge(queue)
        deadline = time.perf_counter() + params.get("budget", 1e9)
        with Meter() as m:
            done = await _publish_many(ch, queue, n, body, inflight, props, deadline)
        await ch.queue_delete(queue)
    return m.metrics(done)


async def consume(url: str, params: Params) -> dict[str, Any]:
    n, prefetch = params["n"], params["prefetch"]
    body = body_of(params.get("size", 100))
    queue = unique("con")
    async with connect(url) as conn:
        async with conn.channel(publisher_confirms=True) as ch:
            await ch.queue_declare(queue, durable=True)
            await _publish_many(ch, queue, n, body, 200, Properties(delivery_mode=2))
        async with conn.channel(prefetch_count=prefetch) as ch:
            with Meter() as m:
                await _consume_n(ch, queue, n)
            await ch.queue_delete(queue)
    return m.metrics(n)


async def large(url: str, params: Params) -> dict[str, Any]:
    n, size, inflight, prefetch = (
        params["n"],
        params["size"],
        params["inflight"],
        params["prefetch"],
    )
    body = body_of(size)
    queue = unique("large")
    async with connect(url) as conn:
        async with conn.channel(publisher_confirms=True) as ch:
            await ch.queue_declare(queue)
            with Meter() as pub:
                await _publish_many(ch, queue, n, body, inflight, Properties(delivery_mode=1))
        async with conn.channel(prefetch_count=prefetch) as ch:
            with Meter() as con:
                await _consume_n(ch, queue, n)
            await ch.queue_delete(queue)
    return {**pub.metrics(n, "pub_", size), **con.metrics(n, "con_", size)}


# ---------------------------------------------------------------- communicator workloads


def _communicator(url: str, params: Params, tag: str, **kwargs: Any) -> kiwi_anyio.Communicator:
    comm = kiwi_anyio.connect(
        url,
        codec=_codec(params),
        message_exchange=f"bench-{tag}.messages",
        task_exchange=f"bench-{tag}.tasks",
        task_queue=f"bench-{tag}.tasks",
        **kwargs,
    )
    if params.get("telemetry"):
        _instrument(comm, params["telemetry"])
    return comm


_providers: list[Any] = []


def _instrument(comm: kiwi_anyio.Communicator, how: str) -> None:
    """``params["telemetry"]``: ``"sdk"``, OpenTelemetry's SDK with a span exporter and a
    metric reader that drop everything (what a real exporter costs on top is its own);
    ``"api"``, the API alone (no SDK: the no-op tracer and meter)."""
    from kiwi_anyio import telemetry

    if how == "api":
        telemetry.install(comm, required=True)
        return
    if not _providers:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import (
            MetricExporter,
            MetricExportResult,
            PeriodicExportingMetricReader,
        )
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            SpanExporter,
            SpanExportResult,
        )

        class NoSpans(SpanExporter):
            def export(self, spans: Any) -> SpanExportResult:
                return SpanExportResult.SUCCESS

        class NoMetrics(MetricExporter):
            def export(self, metrics_data: Any, timeout_millis: float = 0, **_: Any) -> Any:
                return MetricExportResult.SUCCESS

            def force_flush(self, timeout_millis: float = 0) -> bool:
                return True

            def shutdown(self, timeout_millis: float = 0, **_: Any) -> None:
                pass

        tracer_provider = TracerProvider()
        tracer_provider.add_span_processor(BatchSpanProcessor(NoSpans()))
        reader = PeriodicExportingMetricReader(NoMetrics(), export_interval_millis=1000)
        _providers.extend([tracer_provider, MeterProvider(metric_readers=[reader])])
    telemetry.install(comm, tracer_provider=_providers[0], meter_provider=_providers[1])


async def _echo(comm: Any, msg: Any) -> Any:
    return msg


async def tasks(url: str, params: Params) -> dict[str, Any]:
    n, inflight = params["n"], params["inflight"]
    tag = unique("tasks")
    latencies: list[float] = []
    async with _communicator(url, params, tag, task_prefetch_count=params["prefetch"]) as comm:
        await comm.add_task_subscriber(_echo)
        for i in range(10):  # warm-up: declarations, reply queue
            future = await comm.task_send(i)
            assert future is not None
            await future
        sent = 0

        async def sender() -> None:
            nonlocal sent
            while sent < n:
                sent += 1
                t0 = time.perf_counter()
                future = await comm.task_send(sent)
                assert future is not None
                await future
                latencies.append(time.perf_counter() - t0)

        with Meter() as m:
            await _run_workers(inflight, sender)
    return {**m.metrics(len(latencies)), **latency_metrics(latencies)}


async def memory(url: str, params: Params) -> dict[str, Any]:
    """Task round trips, sampling RSS; growth is counted from the end of the warm-up."""
    n, inflight, warmup = params["n"], params["inflight"], params["warmup"]
    samples = params.get("samples", 20)
    tag = unique("mem")
    rss: list[tuple[int, float]] = []
    async with _communicator(url, params, tag, task_prefetch_count=params["prefetch"]) as comm:
        await comm.add_task_subscriber(_echo)
        total = warmup + n
        step = max(total // samples, 1)
        sent = 0
        done = 0

        async def sender() -> None:
            nonlocal sent, done
            while sent < total:
                sent += 1
                future = await comm.task_send(sent)
                assert future is not None
                await future
                done += 1
                if done % step == 0 or done == warmup:
                    gc.collect()
                    rss.append((done, rss_bytes() / 2**20))
                    progress(f"  {done}/{total} round trips, RSS {rss[-1][1]:.1f} MiB")

        with Meter() as m:
            await _run_workers(inflight, sender)
        gc.collect()
        rss.append((done, rss_bytes() / 2**20))
    after_warmup = next((mib for count, mib in rss if count >= warmup), rss[0][1])
    return {
        **m.metrics(done),
        "rss_start_mib": rss[0][1],
        "rss_after_warmup_mib": after_warmup,
        "rss_end_mib": rss[-1][1],
        "rss_growth_mib": rss[-1][1] - after_warmup,
        "rss_growth_n": done - warmup,
        "rss_samples": rss,
    }


async def rpc_seq(url: str, params: Params) -> dict[str, Any]:
    n = params["n"]
    tag = unique("rpcs")
    latencies: list[float] = []
    async with _communicator(url, params, tag) as comm:
        ident = await comm.add_rpc_subscriber(_echo, "echo")
        for i in range(10):
            await (await comm.rpc_send(ident, i))
        deadline = time.perf_counter() + params.get("budget", 1e9)
        with Meter() as m:
            for i in range(n):
                t0 = time.perf_counter()
                await (await comm.rpc_send(ident, i))
                latencies.append(time.perf_counter() - t0)
                if t0 > deadline:
                    break
    return {**m.metrics(len(latencies)), **latency_metrics(latencies)}


async def rpc_par(url: str, params: Params) -> dict[str, Any]:
    n, inflight = params["n"], params["inflight"]
    tag = unique("rpcp")
    latencies: list[float] = []
    async with _communicator(url, params, tag) as comm:
        ident = await comm.add_rpc_subscriber(_echo, "echo")
        for i in range(10):
            await (await comm.rpc_send(ident, i))
        sent = 0

        async def sender() -> None:
            nonlocal sent
            while sent < n:
                sent += 1
                t0 = time.perf_counter()
                await (await comm.rpc_send(ident, sent))
                latencies.append(time.perf_counter() - t0)

        with Meter() as m:
            await _run_workers(inflight, sender)
    return {**m.metrics(len(latencies)), **latency_metrics(latencies)}


async def broadcast(url: str, params: Params) -> dict[str, Any]:
    """``n`` broadcasts, half of them with a subject every subscriber's filter drops."""
    n, subscribers, inflight = params["n"], params["subscribers"], params["inflight"]
    tag = unique("bcast")
    hits = (n + 1) // 2
    counts = [0] * subscribers
    all_done = anyio.Event()
    finished = 0

    def make_subscriber(index: int) -> Callable[..., Awaitable[None]]:
        async def on_broadcast(comm: Any, body: Any, sender: Any, subject: Any, cid: Any) -> None:
            nonlocal finished
            counts[index] += 1
            if counts[index] == hits:
                finished += 1
                if finished == subscribers:
                    all_done.set()

        return on_broadcast

    async with _communicator(url, params, tag) as sender_comm:
        receivers = []
        try:
            for index in range(subscribers):
                comm = _communicator(url, params, tag)
                await comm.__aenter__()
                receivers.append(comm)
                await comm.add_broadcast_subscriber(
                    kiwi_anyio.BroadcastFilter(make_subscriber(index), subject="bench.hit")
                )
            sent = 0

            async def send() -> None:
                nonlocal sent
                while sent < n:
                    subject = "bench.hit" if sent % 2 == 0 else "bench.miss"
                    sent += 1
                    await sender_comm.broadcast_send({"i": sent}, sender="bench", subject=subject)

            with Meter() as m:
                await _run_workers(inflight, send)
                with anyio.fail_after(params.get("timeout", 120)):
                    await all_done.wait()
        finally:
            for comm in reversed(receivers):
                await comm.__aexit__(None, None, None)
    metrics = m.metrics(n)
    metrics["deliveries_per_s"] = hits * subscribers / m.seconds
    return metrics


class _LinkWatch:
    """When the communicator last reported "recovered", and when its RPC subscriber last
    handled a call."""

    def __init__(self) -> None:
        self.recovered_at = 0.0
        self.recovered = anyio.Event()
        self.handled_at = 0.0
        self.handled = anyio.Event()
        self.round = 0  # calls sent before this round's cut do not count

    def __call__(self, event: str, _error: BaseException | None) -> None:
        if event == "recovered":
            self.recovered_at = time.perf_counter()
            self.recovered.set()

    async def echo(self, _comm: Any, msg: Any) -> Any:
        if msg == self.round and not self.handled.is_set():
            self.handled_at = time.perf_counter()
            self.handled.set()
        return msg

    def arm(self) -> None:
        self.recovered = anyio.Event()
        self.handled = anyio.Event()
        self.round += 1


SETTLED_LINK = 1.2  # seconds: over kiwi_anyio's STABLE_LINK


async def _recover_once(
    proxy: Any, caller: kiwi_anyio.Communicator, ident: str, watch: _LinkWatch
) -> tuple[float, float]:
    """Cut the server's link; return (seconds until it reports "recovered", until its RPC
    subscriber handles a call again).

    ``caller`` sends an RPC every 2 ms without waiting for the answers: until the server has
    re-declared its exclusive queue they are unroutable, and one routed just before the broker
    noticed the cut dies with that queue.
    """
    watch.arm()
    t0 = time.perf_counter()
    await proxy.cut()
    with anyio.fail_after(60):
        while not watch.handled.is_set():
            try:
                await caller.rpc_send(ident, watch.round)
            except kiwi_anyio.UnroutableError:  # its queue is gone until it re-subscribes
                pass
            with anyio.move_on_after(0.002):
                await watch.handled.wait()
        await watch.recovered.wait()
    return watch.recovered_at - t0, watch.handled_at - t0


async def recovery(url: str, params: Params) -> dict[str, Any]:
    """Link lost -> subscriber consuming again: an RPC server's link is cut ``cuts`` times.

    The server connects through a forwarder (``bench_proxy``); the caller connects directly and
    keeps sending RPCs until the server's subscriber handles one. Measured twice: with the
    default reconnect backoff (the first retry waits 0.25-0.5 s, jittered) and with
    ``reconnect_max_delay=0`` (no backoff: detection, reconnect, handshake, re-declare and
    re-consume only).
    """
    from urllib.parse import urlsplit

    cuts = params["cuts"]
    parts = urlsplit(url)
    host, port = parts.hostname, parts.port
    assert host is not None
    assert port is not None
    out: dict[str, Any] = {}
    async with forwarder(host, port) as proxy:
        for label, options in (("", {}), ("fast_", {"reconnect_max_delay": 0.0})):
            tag = unique("recovery")
            watch = _LinkWatch()
            recovered: list[float] = []
            handled: list[float] = []
            async with (
                _communicator(proxy.url(), params, tag, **options) as server,
                _communicator(url, params, tag) as caller,
            ):
                server.add_connection_listener(watch)
                ident = await server.add_rpc_subscriber(watch.echo, "echo")
                for _ in range(10):
                    await (await caller.rpc_send(ident, -1))
                with Meter() as m:
                    for _ in range(cuts):
                        # a link that drops within a second of coming up counts as flapping
                        # and is retried with backoff: measure the loss of a settled link
                        await anyio.sleep(SETTLED_LINK)
                        r, h = await _recover_once(proxy, caller, ident, watch)
                        recovered.append(r)
                        handled.append(h)
                        progress(f"  {label}cut: recovered {r * 1e3:.1f} ms, RPC {h * 1e3:.1f} ms")
            out[f"{label}recovered_ms"] = percentile(recovered, 50) * 1e3
            out[f"{label}rpc_ok_ms"] = percentile(handled, 50) * 1e3
            out[f"{label}rpc_ok_max_ms"] = max(handled) * 1e3
            out[f"{label}cpu_s"] = m.cpu
    out["n"] = cuts
    return out


WORKLOADS: dict[str, Callable[[str, Params], Awaitable[dict[str, Any]]]] = {
    "publish": publish,
    "consume": consume,
    "large": large,
    "tasks": tasks,
    "memory": memory,
    "rpc_seq": rpc_seq,
    "rpc_par": rpc_par,
    "broadcast": broadcast,
    "recovery": recovery,
}


def run(workload: str, url: str, params: Params) -> dict[str, Any]:
    try:
        fn = WORKLOADS[workload]
    except KeyError:
        raise Unsupported(workload) from None
    backend = params.get("backend", "asyncio")
    if backend == "uvloop" and importlib.util.find_spec("uvloop") is None:
        raise Unsupported("uvloop is not installed")
    loop_name: list[str] = []

    async def go() -> dict[str, Any]:
        if sniffio.current_async_library() == "asyncio":
            import asyncio

            loop_name.append(type(asyncio.get_running_loop()).__module__)
        else:
            loop_name.append("trio")
        return await fn(url, params)

    if backend == "trio":
        result = anyio.run(go, backend="trio")
    elif backend == "uvloop":
        result = anyio.run(go, backend="asyncio", backend_options={"use_uvloop": True})
    else:
        result = anyio.run(go, backend="asyncio")
    result["loop"] = loop_name[0]
    result["kiwi_anyio_from"] = str(Path(kiwi_anyio.__file__).parent)
    if backend == "uvloop" and "uvloop" not in loop_name[0]:
        raise Unsupported("uvloop is not installed")
    return result


if __name__ == "__main__":
    sys.exit(main(run))

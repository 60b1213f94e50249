"""OpenTelemetry (kiwi_anyio.telemetry): spans, context propagation and metrics, with the SDK's
in-memory span exporter and metric reader, on both backends and on memory:// and RabbitMQ."""

from __future__ import annotations

import json
import logging
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import kiwi_anyio
import kiwi_anyio.patterns.rpc
from kiwi_anyio import telemetry
from kiwi_anyio.channel import Message
from kiwi_anyio.protocol import Properties
from kiwi_anyio.testing.pytest_plugin import private_names

pytestmark = pytest.mark.anyio

TIMEOUT = 20
ROOT = Path(__file__).resolve().parent.parent


class Otel:
    """An SDK tracer and meter provider with in-memory export."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])

    def install(self, comm: kiwi_anyio.Communicator) -> telemetry.Telemetry:
        installed = telemetry.install(
            comm, tracer_provider=self.tracer_provider, meter_provider=self.meter_provider
        )
        assert installed is not None
        return installed

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def named(self, prefix: str) -> list[ReadableSpan]:
        return [s for s in self.spans() if s.name.startswith(prefix)]

    def metrics(self) -> dict[str, list[Any]]:
        """Metric name -> its data points."""
        found: dict[str, list[Any]] = {}
        data = self.reader.get_metrics_data()
        for resource in data.resource_metrics if data else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    found.setdefault(metric.name, []).extend(metric.data.data_points)
        return found


@pytest.fixture
def otel() -> Iterator[Otel]:
    found = Otel()
    yield found
    found.tracer_provider.shutdown()
    found.meter_provider.shutdown()


@pytest.fixture(params=["memory", "rabbitmq"])
def url(request: pytest.FixtureRequest) -> str:
    if request.param == "memory":
        return f"memory://telemetry-{uuid.uuid4().hex}"
    return str(request.getfixturevalue("broker_url"))


@asynccontextmanager
async def pair(
    url: str, otel: Otel | None, **options: Any
) -> AsyncIterator[tuple[kiwi_anyio.Communicator, kiwi_anyio.Communicator]]:
    """A sender and a worker on the same (private) names, instrumented when ``otel``."""
    names = private_names("telemetry")
    sender = kiwi_anyio.connect(url, **names, **options)
    worker = kiwi_anyio.connect(url, **names, **options)
    if otel is not None:
        otel.install(sender)
        otel.install(worker)
    async with sender, worker:
        yield sender, worker


def by_id(spans: list[ReadableSpan]) -> dict[int, ReadableSpan]:
    return {s.context.span_id: s for s in spans if s.context is not None}


def parent_of(span: ReadableSpan, spans: list[ReadableSpan]) -> ReadableSpan | None:
    if span.parent is None:
        return None
    return by_id(spans).get(span.parent.span_id)


async def test_a_task_round_trip_is_one_trace(url: str, otel: Otel) -> None:
    with anyio.fail_after(TIMEOUT):
        async with pair(url, otel) as (sender, worker):
            await worker.add_task_subscriber(lambda _comm, n: n * 2)
            assert await (await sender.task_send(21)) == 42
            queue = sender.task_queue_name
            exchange = sender.task_exchange
            # the reply's ack follows its processing: wait for the last span
            while len(otel.named("ack ")) < 2:
                await anyio.sleep(0.01)
    spans = otel.spans()
    assert len({s.context.trace_id for s in spans}) == 1, [s.name for s in spans]

    send = otel.named(f"publish {exchange}:{queue}")
    assert len(send) == 1
    send_span = send[0]
    assert send_span.parent is None
    assert send_span.kind is trace.SpanKind.PRODUCER
    attrs = dict(send_span.attributes or {})
    assert attrs["messaging.system"] == "rabbitmq"
    assert attrs["messaging.operation.type"] == "send"
    assert attrs["messaging.operation.name"] == "publish"
    assert attrs["messaging.destination.name"] == f"{exchange}:{queue}"
    assert attrs["messaging.rabbitmq.destination.routing_key"] == queue
    correlation_id = attrs["messaging.message.conversation_id"]
    if url.startswith("memory://"):
        assert "server.address" not in attrs
    else:
        assert attrs["server.address"] == "127.0.0.1"
        assert isinstance(attrs["server.port"], int)

    process = otel.named(f"process {exchange}:{queue}:{queue}")
    assert len(process) == 1
    process_span = process[0]
    assert process_span.kind is trace.SpanKind.CONSUMER
    assert parent_of(process_span, spans) is send_span
    pattrs = dict(process_span.attributes or {})
    assert pattrs["messaging.operation.type"] == "process"
    assert pattrs["messaging.destination.name"] == f"{exchange}:{queue}:{queue}"
    assert pattrs["messaging.message.conversation_id"] == correlation_id
    assert isinstance(pattrs["messaging.rabbitmq.message.delivery_tag"], int)
    assert process_span.status.status_code is trace.StatusCode.UNSET

    task_ack = otel.named(f"ack {exchange}:{queue}:{queue}")
    assert len(task_ack) == 1
    assert task_ack[0].kind is trace.SpanKind.CLIENT
    assert parent_of(task_ack[0], spans) is process_span
    assert dict(task_ack[0].attributes or {})["messaging.operation.type"] == "settle"

    replies = otel.named("publish amq.default:")
    assert len(replies) == 1
    assert parent_of(replies[0], spans) is process_span
    reply_process = otel.named("process amq.default:")
    assert len(reply_process) == 1
    assert parent_of(reply_process[0], spans) is replies[0]
    assert dict(reply_process[0].attributes or {})["messaging.message.conversation_id"] == (
        correlation_id
    )
    reply_ack = [s for s in otel.named("ack amq.default:")]
    assert len(reply_ack) == 1
    assert parent_of(reply_ack[0], spans) is reply_process[0]
    assert len(spans) == 6


async def test_an_rpc_is_a_client_span_served_by_a_server_span(url: str, otel: Otel) -> None:
    with anyio.fail_after(TIMEOUT):
        async with pair(url, otel) as (sender, worker):
            await worker.add_rpc_subscriber(lambda _comm, msg: msg * 2, "double")
            assert await (await sender.rpc_send("double", 21)) == 42
            while len(otel.named("ack ")) < 2:
                await anyio.sleep(0.01)
            messages = sender.message_exchange
    spans = otel.spans()
    assert len({s.context.trace_id for s in spans}) == 1, [s.name for s in spans]
    (call,) = otel.named(f"publish {messages}:")
    assert call.kind is trace.SpanKind.CLIENT
    assert call.parent is None
    cattrs = dict(call.attributes or {})
    assert cattrs["messaging.operation.type"] == "send"
    assert cattrs["messaging.operation.name"] == "publish"
    assert cattrs["messaging.system"] == "rabbitmq"
    (serve,) = otel.named(f"process {messages}:")
    assert serve.kind is trace.SpanKind.SERVER
    assert parent_of(serve, spans) is call
    sattrs = dict(serve.attributes or {})
    assert sattrs["messaging.operation.type"] == "process"
    conversation = "messaging.message.conversation_id"
    assert sattrs[conversation] == cattrs[conversation]
    # the reply continues the trace: a PRODUCER child of the server span, whose CONSUMER
    # process (back at the caller) is its child
    (reply,) = otel.named("publish amq.default:")
    assert reply.kind is trace.SpanKind.PRODUCER
    assert parent_of(reply, spans) is serve
    (reply_process,) = otel.named("process amq.default:")
    assert reply_process.kind is trace.SpanKind.CONSUMER
    assert parent_of(reply_process, spans) is reply
    (call_ack,) = otel.named(f"ack {messages}:")
    assert call_ack.kind is trace.SpanKind.CLIENT
    assert parent_of(call_ack, spans) is serve
    assert len(spans) == 6


async def test_each_subscriber_of_a_broadcast_has_its_span(url: str, otel: Otel) -> None:
    got: list[str] = []

    def fail(_comm: Any, *_args: Any) -> None:
        got.append("fails")
        raise ValueError("not this one")

    with anyio.fail_after(TIMEOUT):
        async with pair(url, otel) as (sender, worker):
            await worker.add_broadcast_subscriber(lambda *_: got.append("one"), "one")
            await worker.add_broadcast_subscriber(fail, "fails")
            # filtered out: not delivered to it, so no span
            await worker.add_broadcast_subscriber(
                kiwi_anyio.BroadcastFilter(lambda *_: got.append("other"), subject="other"),
                "filtered",
            )
            await sender.broadcast_send("news", subject="this")
            while not otel.named("ack "):
                await anyio.sleep(0.01)
            messages = sender.message_exchange
    assert sorted(got) == ["fails", "one"]
    spans = otel.spans()
    (send,) = otel.named(f"publish {messages}:")
    assert send.kind is trace.SpanKind.PRODUCER
    (process,) = [s for s in otel.named("process ") if s.kind is trace.SpanKind.CONSUMER]
    assert parent_of(process, spans) is send
    calls = {
        dict(s.attributes or {})["kiwi_anyio.subscriber"]: s
        for s in otel.named("process ")
        if s.kind is trace.SpanKind.INTERNAL
    }
    assert set(calls) == {"one", "fails"}
    for call in calls.values():
        assert parent_of(call, spans) is process
        assert call.name == process.name
        attrs = dict(call.attributes or {})
        assert (
            attrs["messaging.destination.name"]
            == dict(process.attributes or {})["messaging.destination.name"]
        )
        assert "messaging.operation.type" not in attrs  # one process operation per delivery
    assert calls["one"].status.status_code is trace.StatusCode.UNSET
    assert calls["fails"].status.status_code is trace.StatusCode.ERROR
    assert dict(calls["fails"].attributes or {})["error.type"] == "ValueError"
    (ack,) = otel.named("ack ")
    assert parent_of(ack, spans) is process
    assert len(spans) == 5


async def test_the_trace_continues_the_callers_span(otel: Otel) -> None:
    tracer = otel.tracer_provider.get_tracer("test")
    with anyio.fail_after(TIMEOUT):
        async with pair(f"memory://t-{uuid.uuid4().hex}", otel) as (sender, worker):
            await worker.add_rpc_subscriber(lambda _comm, msg: msg, "echo")
            with tracer.start_as_current_span("request") as request:
                assert await (await sender.rpc_send("echo", 1)) == 1
    spans = otel.spans()
    send = otel.named("publish ")[0]
    assert send.name.endswith(":[rpc].echo") or "echo" in send.name
    assert send.parent is not None
    assert send.parent.span_id == request.get_span_context().span_id
    assert {s.context.trace_id for s in spans} == {request.get_span_context().trace_id}


async def test_an_rpc_that_raises_gives_error_type_and_status(url: str, otel: Otel) -> None:
    def fail(_comm: Any, _msg: Any) -> None:
        raise ValueError("no such thing")

    with anyio.fail_after(TIMEOUT):
        async with pair(url, otel) as (sender, worker):
            await worker.add_rpc_subscriber(fail, "fails")
            with pytest.raises(kiwi_anyio.RemoteException):
                await (await sender.rpc_send("fails", 1))
            while not otel.named("ack amq.default:"):
                await anyio.sleep(0.01)
    process = [s for s in otel.named("process ") if "fails" in s.name]
    assert len(process) == 1
    assert process[0].status.status_code is trace.StatusCode.ERROR
    assert dict(process[0].attributes or {})["error.type"] == "ValueError"
    # the publish that carried the call succeeded
    assert otel.named("publish ")[0].status.status_code is trace.StatusCode.UNSET
    durations = otel.metrics()["messaging.process.duration"]
    failed = [p for p in durations if p.attributes.get("error.type") == "ValueError"]
    assert len(failed) == 1 and failed[0].count == 1


async def test_metrics_count_exactly_what_was_sent(otel: Otel) -> None:
    tasks, broadcasts = 5, 3
    got: list[Any] = []
    with anyio.fail_after(TIMEOUT):
        async with pair(f"memory://t-{uuid.uuid4().hex}", otel) as (sender, worker):
            await worker.add_task_subscriber(lambda _comm, n: n)
            await worker.add_broadcast_subscriber(lambda _comm, body, *_: got.append(body))
            futures = [await sender.task_send(i) for i in range(tasks)]
            for future in futures:
                await future
            for i in range(broadcasts):
                await sender.broadcast_send(i)
            while len(got) < broadcasts:
                await anyio.sleep(0.01)
            queue, exchange = sender.task_queue_name, sender.task_exchange
            messages = sender.message_exchange
    metrics = otel.metrics()

    def total(name: str, destination: str, operation: str | None = None) -> int:
        return sum(
            p.value if hasattr(p, "value") else p.count
            for p in metrics[name]
            if p.attributes["messaging.destination.name"].startswith(destination)
            and (operation is None or p.attributes["messaging.operation.name"] == operation)
        )

    assert total("messaging.client.sent.messages", f"{exchange}:{queue}") == tasks
    assert total("messaging.client.sent.messages", f"{messages}:") == broadcasts
    assert total("messaging.client.sent.messages", "amq.default:") == tasks  # the replies
    assert total("messaging.client.consumed.messages", f"{exchange}:{queue}:") == tasks
    assert total("messaging.client.consumed.messages", f"{messages}:") == broadcasts
    assert total("messaging.process.duration", f"{exchange}:{queue}:") == tasks
    assert total("messaging.client.operation.duration", f"{exchange}:{queue}", "publish") == tasks
    acks = [
        p
        for p in metrics["messaging.client.operation.duration"]
        if p.attributes["messaging.operation.name"] == "ack"
    ]
    assert acks == []  # a settle waits for nothing: a span, no duration
    for point in metrics["messaging.client.sent.messages"]:
        assert "error.type" not in point.attributes
    assert all(p.value == 0 for p in metrics["kiwi_anyio.deliveries.in_flight"])
    (pending,) = metrics["kiwi_anyio.requests.pending"]
    assert pending.value == 0
    histogram = metrics["messaging.process.duration"][0]
    assert list(histogram.explicit_bounds) == list(telemetry.DURATION_BUCKETS)


async def test_a_failed_publish_has_its_error(otel: Otel) -> None:
    with anyio.fail_after(TIMEOUT):
        async with pair(f"memory://t-{uuid.uuid4().hex}", otel) as (sender, _worker):
            with pytest.raises(kiwi_anyio.UnroutableError):
                await sender.rpc_send("nobody", 1)
    (send,) = otel.named("publish ")
    assert send.status.status_code is trace.StatusCode.ERROR
    error_type = dict(send.attributes or {})["error.type"]
    assert str(error_type).startswith("kiwi_anyio.")
    (sent,) = otel.metrics()["messaging.client.sent.messages"]
    assert sent.attributes["error.type"] == error_type


async def test_a_dead_lettered_delivery_is_a_reject_span(otel: Otel) -> None:
    with anyio.fail_after(TIMEOUT):
        async with pair(f"memory://t-{uuid.uuid4().hex}", otel) as (sender, worker):
            await worker.add_task_subscriber(lambda _comm, n: n)
            queue = sender.task_queue_name
            # not YAML: rejected without requeueing
            await sender._publisher.publish(
                b"{[: not yaml",
                exchange=sender.task_exchange,
                routing_key=queue,
                properties=Properties(content_type="application/x-yaml"),
                mandatory=True,
                what="garbage",
            )
            while not otel.named("reject "):
                await anyio.sleep(0.01)
    (reject,) = otel.named("reject ")
    attrs = dict(reject.attributes or {})
    assert attrs["messaging.operation.name"] == "reject"
    assert attrs["messaging.operation.type"] == "settle"
    assert attrs["kiwi_anyio.requeue"] is False


async def test_without_telemetry_nothing_is_emitted(
    otel: Otel, monkeypatch: pytest.MonkeyPatch
) -> None:
    headers: list[Any] = []

    def task(_comm: Any, n: int) -> int:
        return n

    with anyio.fail_after(TIMEOUT):
        async with pair(f"memory://t-{uuid.uuid4().hex}", None) as (sender, worker):

            def middleware(handler: Any, _what: str) -> Any:
                async def seen(message: Message) -> None:
                    headers.append(message.properties.headers)
                    await handler(message)

                return seen

            worker.hooks.add_delivery_middleware(middleware)
            await worker.add_task_subscriber(task)
            assert await (await sender.task_send(1)) == 1
    assert otel.spans() == []
    assert otel.metrics() == {}
    assert headers == [None]  # no traceparent
    # without the API: nothing installed, nothing breaks
    monkeypatch.setattr(telemetry, "available", lambda: False)
    comm = kiwi_anyio.connect(f"memory://t-{uuid.uuid4().hex}")
    assert telemetry.install(comm) is None
    assert comm.hooks.publish == [] and comm.hooks.delivery == []
    with pytest.raises(ImportError, match="otel"):
        telemetry.install(comm, required=True)


async def test_uninstall_stops_emitting(otel: Otel) -> None:
    with anyio.fail_after(TIMEOUT):
        async with pair(f"memory://t-{uuid.uuid4().hex}", otel) as (sender, worker):
            await worker.add_task_subscriber(lambda _comm, n: n)
            for comm in (sender, worker):
                installed = telemetry.install(comm)
                assert installed is not None
                installed.uninstall()
            assert await (await sender.task_send(1)) == 1
    assert otel.spans() == []


async def test_installing_twice_keeps_one(otel: Otel) -> None:
    comm = kiwi_anyio.connect(f"memory://t-{uuid.uuid4().hex}")
    first = otel.install(comm)
    assert telemetry.install(comm) is first
    assert len(comm.hooks.publish) == 1
    second = otel.install(comm)  # providers given: they replace the first
    assert second is not first and comm.hooks.publish == [second._on_publish]


async def test_logs_carry_the_context(otel: Otel, caplog: pytest.LogCaptureFixture) -> None:
    tracer = otel.tracer_provider.get_tracer("test")
    log = logging.getLogger("test_telemetry")
    log.addFilter(telemetry.TraceContextFilter())
    try:
        with caplog.at_level(logging.INFO, "test_telemetry"):
            log.info("outside")
            with tracer.start_as_current_span("inside") as span:
                log.info("inside")
    finally:
        log.filters.clear()
    outside, inside = caplog.records
    assert outside.trace_id == ""  # type: ignore[attr-defined]
    assert inside.trace_id == format(span.get_span_context().trace_id, "032x")  # type: ignore[attr-defined]

    seen: list[dict[str, Any]] = []
    with anyio.fail_after(TIMEOUT):
        async with pair(f"memory://t-{uuid.uuid4().hex}", None) as (sender, worker):

            def middleware(handler: Any, what: str) -> Any:
                async def logged(message: Message) -> None:
                    seen.append(telemetry.log_extra(message, what))
                    await handler(message)

                return logged

            worker.hooks.add_delivery_middleware(middleware)
            await worker.add_task_subscriber(lambda _comm, n: n)
            await (await sender.task_send(1))
    (extra,) = seen
    assert extra["messaging_consumer"] == f"task queue {sender.task_queue_name!r}"
    assert extra["correlation_id"] and isinstance(extra["delivery_tag"], int)


async def test_a_subscribers_failure_is_logged_in_its_process_span(
    otel: Otel, caplog: pytest.LogCaptureFixture
) -> None:
    def fail(_comm: Any, _msg: Any) -> None:
        raise ValueError("no such thing")

    log = logging.getLogger("kiwi_anyio.communicator")
    trace_filter = telemetry.TraceContextFilter()
    log.addFilter(trace_filter)
    try:
        with caplog.at_level(logging.INFO, "kiwi_anyio"), anyio.fail_after(TIMEOUT):
            async with pair(f"memory://t-{uuid.uuid4().hex}", otel) as (sender, worker):
                await worker.add_rpc_subscriber(fail, "fails")
                with pytest.raises(kiwi_anyio.RemoteException):
                    await (await sender.rpc_send("fails", 1))
    finally:
        log.removeFilter(trace_filter)
    (record,) = [r for r in caplog.records if r.exc_info]
    (process,) = [s for s in otel.named("process ") if "fails" in s.name]
    assert process.context is not None
    assert record.trace_id == format(process.context.trace_id, "032x")  # type: ignore[attr-defined]
    assert record.span_id == format(process.context.span_id, "016x")  # type: ignore[attr-defined]
    assert record.identifier == "fails"  # type: ignore[attr-defined]


WORKER = """
import json, sys
import anyio, kiwi_anyio
from kiwi_anyio import telemetry
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))


async def main():
    comm = kiwi_anyio.connect(sys.argv[1], **json.loads(sys.argv[2]))
    telemetry.install(comm, tracer_provider=provider)
    done = anyio.Event()

    def task(_comm, n):
        done.set()
        return n + 1

    async with comm:
        await comm.add_task_subscriber(task)
        print("ready", flush=True)
        await done.wait()
        await anyio.sleep(0.5)  # the reply's confirm and the ack
    print(json.dumps([
        {"name": s.name, "trace": s.context.trace_id, "span": s.context.span_id,
         "parent": s.parent.span_id if s.parent else None}
        for s in exporter.get_finished_spans()
    ]), flush=True)


anyio.run(main)
"""


@pytest.mark.broker
async def test_the_trace_crosses_processes(broker_url: str, otel: Otel) -> None:
    names = private_names("telemetry")
    process = await anyio.open_process(
        [sys.executable, "-c", textwrap.dedent(WORKER), broker_url, json.dumps(names)],
        cwd=ROOT,
    )
    try:
        assert process.stdout is not None
        out = b""
        with anyio.fail_after(TIMEOUT):
            while b"ready" not in out:
                out += await process.stdout.receive()
            comm = kiwi_anyio.connect(broker_url, **names)
            otel.install(comm)
            async with comm:
                assert await (await comm.task_send(1)) == 2
            async for chunk in process.stdout:
                out += chunk
            await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
        await process.aclose()
    worker_spans = json.loads(out.decode().splitlines()[-1])
    (send,) = [s for s in otel.spans() if s.name.startswith(f"publish {names['task_exchange']}")]
    assert send.context is not None
    (worker_process,) = [s for s in worker_spans if s["name"].startswith("process ")]
    assert worker_process["trace"] == send.context.trace_id
    assert worker_process["parent"] == send.context.span_id
    (reply_process,) = otel.named("process amq.default:")
    (reply,) = [s for s in worker_spans if s["name"].startswith("publish amq.default:")]
    assert reply_process.parent is not None and reply_process.parent.span_id == reply["span"]


@pytest.mark.broker
async def test_kiwipy_ignores_the_trace_context(broker_url: str, otel: Otel) -> None:
    """With an SDK configured, traceparent really is in the headers, both ways, and kiwiPy
    0.9 (which ignores the headers table) serves and is served as before."""
    from tests.test_kiwipy_interop import Names, default_testing_mode, kiwipy_peer

    names = Names.unique()
    testing_mode = await default_testing_mode(broker_url)
    sent: list[tuple[str, Any]] = []

    def communicator() -> kiwi_anyio.Communicator:
        comm = kiwi_anyio.connect(
            broker_url,
            message_exchange=names.message_exchange,
            task_exchange=names.task_exchange,
            task_queue=names.task_queue,
            testing_mode=testing_mode,
        )
        otel.install(comm)
        # added after telemetry's hook: sees the headers it adds
        comm.hooks.add_publish_hook(
            lambda out: sent.append((out.what, (out.properties.headers or {}).get("traceparent")))
        )
        return comm

    with anyio.fail_after(2 * TIMEOUT):
        async with kiwipy_peer(broker_url, names, "serve") as peer, communicator() as comm:
            assert await (await comm.task_send(21)) == 42
            assert await (await comm.rpc_send("echo", "hi")) == "hi"
            await comm.broadcast_send("news", sender="a.jones", subject="purchase.x")
            heard = await peer.wait_kind("broadcast", 4)  # every filter matches
            assert {e["body"] for e in heard} == {"news"}
        assert len(sent) == 3 and all(traceparent for _, traceparent in sent), sent
        sent.clear()
        async with communicator() as comm, kiwipy_peer(broker_url, names, "client") as peer:
            await comm.add_rpc_subscriber(lambda _comm, msg: msg, "echo")
            await comm.add_task_subscriber(lambda _comm, n: n + 1)
            assert await peer.result("rpc_send", recipient="echo", msg="hi") == ("hi", 0)
            assert await peer.result("task_send", task=1) == (2, 0)
        replies = [traceparent for what, traceparent in sent if what.startswith("reply to ")]
        assert len(replies) == 2 and all(replies), sent

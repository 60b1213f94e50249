"""OpenTelemetry traces and metrics for a communicator, on the seam of :mod:`kiwi_anyio.hooks`.

:func:`install` registers one publish hook and one delivery middleware on ``comm.hooks``.
They follow the OpenTelemetry semantic conventions for messaging and RabbitMQ, **v1.44.0**
(:data:`SEMCONV_VERSION`; still "Development" status, so names may change in later versions):

- every publish (task, RPC call, broadcast, reply) is a PRODUCER span ``publish
  {exchange}:{routing key}`` (``amq.default`` for the default exchange), from the hooks until
  the broker's confirm (or the error); an RPC call's is a CLIENT span (a request awaiting its
  reply). Its W3C ``traceparent``/``tracestate`` go into the AMQP headers table, where kiwiPy
  never looks;
- every delivery to a consumer is a CONSUMER span ``process {exchange}:{routing key}:{queue}``
  (to an RPC subscriber: a SERVER span), a child of the span that sent it (the trace goes on
  from the sender to the worker, and back with the reply). A subscriber that raised sets its
  ``error.type`` and an error status;
- a delivery handed to several subscribers (a broadcast) has one INTERNAL span
  ``process ...`` per subscriber called, a child of the process span, with
  ``kiwi_anyio.subscriber`` (its identifier);
- every ack, nack or reject of a delivery is a CLIENT span ``ack ...``/``nack ...``/
  ``reject ...`` (``kiwi_anyio.requeue`` tells a dead-lettering from a requeue), a child of the
  process span.

Attributes: ``messaging.system`` (``rabbitmq``), ``messaging.operation.type``,
``messaging.operation.name``, ``messaging.destination.name``,
``messaging.rabbitmq.destination.routing_key``, ``messaging.message.id``,
``messaging.message.conversation_id`` (the correlation id),
``messaging.rabbitmq.message.delivery_tag``, ``server.address``, ``server.port`` (not on
``memory://``) and ``error.type``.

Metrics: ``messaging.client.sent.messages``, ``messaging.client.consumed.messages``,
``messaging.client.operation.duration`` (publish to confirm),
``messaging.process.duration`` (the conventions' bucket boundaries, seconds), labelled by
system, operation name, destination, server and ``error.type``; and the library's own
``kiwi_anyio.deliveries.in_flight`` (deliveries being processed),
``kiwi_anyio.requests.pending`` (requests waiting for a reply) and
``kiwi_anyio.connection.reconnects``.

Only ``opentelemetry-api`` is used (``pip install kiwi-anyio[otel]``), imported when
:func:`install` runs; the SDK, its exporters and the providers are the application's. Without
the API nothing is installed and nothing costs.

Logs: every log record about a delivered message carries the fields of :data:`LOG_FIELDS`
(:func:`log_extra`, from :mod:`kiwi_anyio._logctx`, builds them: the patterns use it without
importing this module), and :class:`TraceContextFilter` adds the current
``trace_id``/``span_id`` to every record.

It must not know the patterns: what it sees comes through the hooks.
"""

from __future__ import annotations

import copy
import logging
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Final, cast

from ._logctx import LOG_FIELDS, log_extra
from ._version import __version__
from .channel import Channel, Message, Properties
from .channel import Message as MessageInterface
from .hooks import DeliveryHandler, Outgoing, is_rpc_call, is_rpc_serve

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation
    from opentelemetry.trace import Span, TracerProvider

    from .communicator import Communicator

__all__ = [
    "DURATION_BUCKETS",
    "LOG_FIELDS",
    "SCHEMA_URL",
    "SEMCONV_VERSION",
    "Telemetry",
    "TraceContextFilter",
    "available",
    "install",
    "log_extra",
]

logger = logging.getLogger("kiwi_anyio.telemetry")

#: the version of the OpenTelemetry semantic conventions followed
SEMCONV_VERSION: Final = "1.44.0"
SCHEMA_URL: Final = f"https://opentelemetry.io/schemas/{SEMCONV_VERSION}"
#: the conventions' bucket boundaries for messaging durations (seconds)
DURATION_BUCKETS: Final = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
)

# the attribute names (semantic conventions v1.44.0)
SYSTEM: Final = "messaging.system"
OPERATION_TYPE: Final = "messaging.operation.type"
OPERATION_NAME: Final = "messaging.operation.name"
DESTINATION: Final = "messaging.destination.name"
ROUTING_KEY: Final = "messaging.rabbitmq.destination.routing_key"
MESSAGE_ID: Final = "messaging.message.id"
CONVERSATION_ID: Final = "messaging.message.conversation_id"
DELIVERY_TAG: Final = "messaging.rabbitmq.message.delivery_tag"
SERVER_ADDRESS: Final = "server.address"
SERVER_PORT: Final = "server.port"
ERROR_TYPE: Final = "error.type"
REQUEUE: Final = "kiwi_anyio.requeue"
CONSUMER: Final = "kiwi_anyio.consumer"
SUBSCRIBER: Final = "kiwi_anyio.subscriber"
RABBITMQ: Final = "rabbitmq"
DEFAULT_EXCHANGE: Final = "amq.default"


_available: list[bool] = []  # the answer of available(), once known


def available() -> bool:
    """Whether ``opentelemetry-api`` can be imported (looked for once: a failed import
    searches the whole path every time)."""
    if not _available:
        try:
            import opentelemetry.metrics
            import opentelemetry.propagate
            import opentelemetry.trace  # noqa: F401
        except ImportError:
            _available.append(False)
        else:
            _available.append(True)
    return _available[0]


_installed: weakref.WeakKeyDictionary[Any, Telemetry] = weakref.WeakKeyDictionary()


def install(
    comm: Communicator,
    *,
    required: bool = False,
    tracer_provider: TracerProvider | None = None,
    meter_provider: MeterProvider | None = None,
) -> Telemetry | None:
    """Instrument ``comm`` (call it before ``async with``; consumers started earlier are not
    traced). Returns the :class:`Telemetry`, or None when ``opentelemetry-api`` is not
    importable (``required=True``: raise ``ImportError`` then).

    The providers default to the global ones (``opentelemetry.trace.set_tracer_provider``),
    looked up at each use, so an application may configure them after creating the
    communicator. Installing twice returns the first :class:`Telemetry`, unless providers
    are given: then they replace it.
    """
    if not available():
        if required:
            raise ImportError(
                "telemetry=True needs opentelemetry-api: pip install 'kiwi-anyio[otel]'"
            )
        return None
    existing = _installed.get(comm)
    if existing is not None:
        if tracer_provider is None and meter_provider is None:
            return existing
        existing.uninstall()
    return Telemetry(comm, tracer_provider=tracer_provider, meter_provider=meter_provider)


def _error_type(error: BaseException) -> str:
    """``error.type``: the exception's qualified class name (``cancelled`` for both
    backends' cancellation)."""
    cls = type(error)
    if cls.__name__ in ("Cancelled", "CancelledError"):
        return "cancelled"
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


def _get_header(carrier: Mapping[str, Any], key: str) -> list[str] | None:
    value = carrier.get(key)
    if value is None:
        return None
    if isinstance(value, bytes | bytearray | memoryview):
        value = bytes(value).decode("latin-1")
    return [str(value)]


class _Getter:
    """Reads the W3C headers from an AMQP headers table (long strings may come as bytes)."""

    def get(self, carrier: Mapping[str, Any], key: str) -> list[str] | None:
        return _get_header(carrier, key)

    def keys(self, carrier: Mapping[str, Any]) -> list[str]:
        return list(carrier)


class _Instruments:
    """The instruments of one meter provider (created once: a second creation of the same
    instrument makes the SDK warn)."""

    def __init__(self, meter_provider: MeterProvider | None) -> None:
        from opentelemetry import metrics

        meter = metrics.get_meter("kiwi_anyio", __version__, meter_provider, schema_url=SCHEMA_URL)
        self.sent = meter.create_counter(
            "messaging.client.sent.messages",
            unit="{message}",
            description="Number of messages producer attempted to send to the broker.",
        )
        self.consumed = meter.create_counter(
            "messaging.client.consumed.messages",
            unit="{message}",
            description="Number of messages that were delivered to the application.",
        )
        self.operation_duration = meter.create_histogram(
            "messaging.client.operation.duration",
            unit="s",
            description="Duration of messaging operation initiated by a producer or consumer "
            "client.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self.process_duration = meter.create_histogram(
            "messaging.process.duration",
            unit="s",
            description="Duration of processing operation.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self.reconnects = meter.create_counter(
            "kiwi_anyio.connection.reconnects",
            unit="{reconnect}",
            description="Connections recovered after a lost one.",
        )
        self.telemetries: weakref.WeakSet[Telemetry] = weakref.WeakSet()
        meter.create_observable_gauge(
            "kiwi_anyio.requests.pending",
            callbacks=[self._pending],
            unit="{request}",
            description="Requests (tasks, RPC calls) waiting for their reply.",
        )
        # counted in plain ints and observed at collection: no measurement per delivery
        meter.create_observable_up_down_counter(
            "kiwi_anyio.deliveries.in_flight",
            callbacks=[self._in_flight],
            unit="{message}",
            description="Deliveries being processed by a subscriber.",
        )

    def _pending(self, options: CallbackOptions) -> Iterable[Observation]:
        from opentelemetry.metrics import Observation

        total = sum(t.pending_replies() for t in list(self.telemetries))
        return [Observation(total, {SYSTEM: RABBITMQ})]

    def _in_flight(self, options: CallbackOptions) -> Iterable[Observation]:
        from opentelemetry.metrics import Observation

        totals: dict[str, int] = {}
        for telemetry in list(self.telemetries):
            for what, count in telemetry.in_flight.items():
                totals[what] = totals.get(what, 0) + count
        return [Observation(count, {CONSUMER: what}) for what, count in totals.items()]


_by_provider: weakref.WeakKeyDictionary[Any, _Instruments] = weakref.WeakKeyDictionary()
_global_instruments: list[_Instruments] = []


def _instruments(meter_provider: MeterProvider | None) -> _Instruments:
    if meter_provider is None:
        if not _global_instruments:
            _global_instruments.append(_Instruments(None))
        return _global_instruments[0]
    found = _by_provider.get(meter_provider)
    if found is None:
        found = _by_provider[meter_provider] = _Instruments(meter_provider)
    return found


class Telemetry:
    """The OpenTelemetry instrumentation of one communicator (see the module docstring).

    Create it with :func:`install`, before ``async with comm``. :meth:`uninstall` stops it
    (consumers already wrapped pass deliveries straight through from then on).
    """

    def __init__(
        self,
        comm: Communicator,
        *,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
    ) -> None:
        from opentelemetry import context, propagate, trace

        self._comm = weakref.ref(comm)
        self._trace = trace
        self._context = context
        self._propagate = propagate
        self._getter = _Getter()
        self._tracer = trace.get_tracer(
            "kiwi_anyio", __version__, tracer_provider, schema_url=SCHEMA_URL
        )
        self._instruments = _instruments(meter_provider)
        self._instruments.telemetries.add(self)
        self._enabled = True
        #: deliveries being handled now, by consumer (``what``)
        self.in_flight: dict[str, int] = {}
        self._server_of: Any = None  # the connection _server_attrs were computed for
        self._server_attrs: dict[str, Any] = {}
        comm.hooks.add_publish_hook(self._on_publish)
        comm.hooks.add_delivery_middleware(self._middleware, queue=True)
        comm.add_connection_listener(self._on_connection_event)
        _installed[comm] = self

    def uninstall(self) -> None:
        """Stop emitting: remove the hooks (wrapped consumers pass deliveries through)."""
        self._enabled = False
        comm = self._comm()
        if comm is None:
            return
        if self._on_publish in comm.hooks.publish:
            comm.hooks.publish.remove(self._on_publish)
        self._instruments.telemetries.discard(self)
        comm.remove_connection_listener(self._on_connection_event)
        if _installed.get(comm) is self:
            del _installed[comm]

    # ------------------------------------------------------------ what the gauges read

    def pending_replies(self) -> int:
        """Requests of this communicator waiting for their reply."""
        comm = self._comm()
        requests = getattr(comm, "_requests", None)
        pending = getattr(requests, "pending", None)
        return len(pending) if pending is not None else 0

    def _on_connection_event(self, event: str, error: BaseException | None) -> None:
        if event == "recovered" and self._enabled:
            self._instruments.reconnects.add(1, {SYSTEM: RABBITMQ, **self._server()})

    def _server(self) -> dict[str, Any]:
        """``server.address`` and ``server.port`` of the connection now (none on memory://)."""
        comm = self._comm()
        link = getattr(comm, "_link", None)
        connection = getattr(link, "connection", None)
        if connection is self._server_of and self._server_attrs:
            return self._server_attrs
        address = getattr(connection, "address", None)
        if address is None:
            params = getattr(comm, "_params", None)
            addresses = getattr(params, "addresses", None)
            address = addresses[0] if addresses else None
        attrs = {} if address is None else {SERVER_ADDRESS: address.host, SERVER_PORT: address.port}
        self._server_of, self._server_attrs = connection, attrs
        return attrs

    # ------------------------------------------------------------ sending

    def _on_publish(self, outgoing: Outgoing) -> None:
        """The publish hook: a PRODUCER span, its context into the headers, and the
        metrics once the publish ended."""
        trace = self._trace
        routing_key = outgoing.routing_key
        destination = f"{outgoing.exchange or DEFAULT_EXCHANGE}:{routing_key}"
        server = self._server()
        metric_attrs = {
            SYSTEM: RABBITMQ,
            OPERATION_NAME: "publish",
            DESTINATION: destination,
            **server,
        }
        attrs: dict[str, Any] = {OPERATION_TYPE: "send", **metric_attrs}
        properties = outgoing.properties
        if routing_key:
            attrs[ROUTING_KEY] = routing_key
        if properties.message_id:
            attrs[MESSAGE_ID] = properties.message_id
        if properties.correlation_id:
            attrs[CONVERSATION_ID] = properties.correlation_id
        # an RPC call is a request awaiting its reply: CLIENT, as the issue asks and the
        # conventions allow for request/reply (its messaging attributes stay)
        kind = trace.SpanKind.CLIENT if is_rpc_call(outgoing.what) else trace.SpanKind.PRODUCER
        span = self._tracer.start_span(f"publish {destination}", kind=kind, attributes=attrs)
        carrier: dict[str, Any] = {}
        self._propagate.inject(carrier, context=trace.set_span_in_context(span))
        if carrier:
            # a copy: the pattern's properties (and headers) are not ours to change
            outgoing.properties = _with_headers(properties, carrier)
        start = time.perf_counter()
        instruments = self._instruments

        def published(error: BaseException | None) -> None:
            duration = time.perf_counter() - start
            labels = metric_attrs
            if error is not None:
                labels = {**metric_attrs, ERROR_TYPE: _error_type(error)}
                _fail(trace, span, error)
            span.end()
            instruments.sent.add(1, labels)
            instruments.operation_duration.record(duration, labels)

        outgoing.when_published(published)

    # ------------------------------------------------------------ receiving

    def _middleware(self, handler: DeliveryHandler, what: str, queue: str) -> DeliveryHandler:
        """The delivery middleware: a CONSUMER span around each delivery's handler, with
        the sender's span as parent; the message handed on reports its settles."""
        trace = self._trace
        context = self._context
        tracer = self._tracer
        instruments = self._instruments
        in_flight = self.in_flight
        in_flight.setdefault(what, 0)
        empty = context.Context()
        # serving an RPC call is the SERVER side of a request/reply; the rest CONSUMER
        kind = trace.SpanKind.SERVER if is_rpc_serve(what) else trace.SpanKind.CONSUMER

        async def traced(message: Message) -> None:
            if not self._enabled:
                await handler(message)
                return
            properties = message.properties
            routing_key = message.routing_key
            destination = f"{message.exchange or DEFAULT_EXCHANGE}:{routing_key}:{queue}"
            headers = properties.headers
            parent = (
                self._propagate.extract(headers, context=empty, getter=self._getter)
                if headers
                else empty
            )
            metric_attrs = {
                SYSTEM: RABBITMQ,
                OPERATION_NAME: "process",
                DESTINATION: destination,
                **self._server(),
            }
            attrs: dict[str, Any] = {
                OPERATION_TYPE: "process",
                DELIVERY_TAG: message.delivery_tag,
                **metric_attrs,
            }
            if routing_key:
                attrs[ROUTING_KEY] = routing_key
            if properties.message_id:
                attrs[MESSAGE_ID] = properties.message_id
            if properties.correlation_id:
                attrs[CONVERSATION_ID] = properties.correlation_id
            span = tracer.start_span(
                f"process {destination}",
                context=parent,
                kind=kind,
                attributes=attrs,
            )
            current = trace.set_span_in_context(span, parent)
            observed = _ObservedMessage(message, self, current, destination, metric_attrs)
            instruments.consumed.add(1, metric_attrs)
            in_flight[what] += 1
            token = context.attach(current)
            start = time.perf_counter()
            error: BaseException | None = None
            try:
                await handler(cast(Message, observed))
            except BaseException as exc:
                error = exc
                raise
            finally:
                duration = time.perf_counter() - start
                context.detach(token)
                error = error or observed.failure
                labels = metric_attrs
                if error is not None:
                    labels = {**metric_attrs, ERROR_TYPE: _error_type(error)}
                    _fail(trace, span, error)
                span.end()
                instruments.process_duration.record(duration, labels)
                in_flight[what] -= 1

        return traced

    def _settle(
        self,
        name: str,
        message: _ObservedMessage,
        requeue: bool | None,
        settle: Callable[[], None],
    ) -> None:
        """``settle()`` (an ack, nack or reject of ``message``) in a CLIENT span."""
        trace = self._trace
        attrs: dict[str, Any] = {
            OPERATION_TYPE: "settle",
            DELIVERY_TAG: message.delivery_tag,
            **message._attrs,
            OPERATION_NAME: name,
        }
        if message.routing_key:
            attrs[ROUTING_KEY] = message.routing_key
        if requeue is not None:
            attrs[REQUEUE] = requeue
        span = self._tracer.start_span(
            f"{name} {message._destination}",
            context=message._parent,
            kind=trace.SpanKind.CLIENT,
            attributes=attrs,
        )
        # no duration metric: a settle queues one frame, it waits for nothing
        try:
            settle()
        except BaseException as exc:
            _fail(trace, span, exc)
            raise
        finally:
            span.end()


def _fail(trace: Any, span: Span, error: BaseException) -> None:
    """Mark ``span`` failed with ``error``."""
    span.set_attribute(ERROR_TYPE, _error_type(error))
    span.set_status(trace.Status(trace.StatusCode.ERROR, str(error) or type(error).__name__))
    if isinstance(error, Exception):
        span.record_exception(error)


def _with_headers(properties: Properties, extra: Mapping[str, Any]) -> Properties:
    """A copy of ``properties`` with ``extra`` added to its headers."""
    copied = copy.copy(properties)
    copied.headers = {**(properties.headers or {}), **extra}
    return copied


class _ObservedMessage(MessageInterface):
    """A delivered message as the handler sees it: its settles are spans; a subscriber's
    failure is kept for the process span (see :func:`kiwi_anyio.hooks.subscriber_failed`)."""

    __slots__ = ("_attrs", "_destination", "_inner", "_parent", "_telemetry", "failure")

    def __init__(
        self,
        inner: Message,
        telemetry: Telemetry,
        parent: Context,
        destination: str,
        metric_attrs: dict[str, Any],
    ) -> None:
        self._inner = inner
        self._telemetry = telemetry
        self._parent = parent
        self._destination = destination
        self._attrs = metric_attrs
        self.failure: BaseException | None = None
        self.body = inner.body
        self.properties = inner.properties
        self.delivery_tag = inner.delivery_tag
        self.redelivered = inner.redelivered
        self.exchange = inner.exchange
        self.routing_key = inner.routing_key
        self.consumer_tag = inner.consumer_tag
        self.message_count = inner.message_count
        self.no_ack = inner.no_ack

    @property
    def channel(self) -> Channel:
        """The channel the message arrived on."""
        return self._inner.channel

    @property
    def settled(self) -> bool:
        """True once acked, nacked or rejected."""
        return self._inner.settled

    def on_subscriber_failed(self, exc: BaseException) -> None:
        """The subscriber raised ``exc``: the process span fails with it."""
        self.failure = exc

    @contextmanager
    def subscriber_scope(self, identifier: str) -> Iterator[None]:
        """The call of one subscriber (of several: a broadcast's) on this message, in an
        INTERNAL span ``process {destination}`` that is the process span's child, with
        ``kiwi_anyio.subscriber``; an exception leaving it fails the span (and goes on)."""
        telemetry = self._telemetry
        trace = telemetry._trace
        attrs = {
            SYSTEM: RABBITMQ,
            OPERATION_NAME: "process",
            DESTINATION: self._destination,
            SUBSCRIBER: identifier,
        }
        span = telemetry._tracer.start_span(
            f"process {self._destination}",
            context=self._parent,
            kind=trace.SpanKind.INTERNAL,
            attributes=attrs,
        )
        token = telemetry._context.attach(trace.set_span_in_context(span, self._parent))
        try:
            yield
        except BaseException as exc:
            _fail(trace, span, exc)
            raise
        finally:
            telemetry._context.detach(token)
            span.end()

    def ack(self) -> None:
        """Acknowledge (in a settle span)."""
        self._telemetry._settle("ack", self, None, self._inner.ack)

    def nack(self, *, requeue: bool = True) -> None:
        """Negatively acknowledge (in a settle span)."""
        self._telemetry._settle("nack", self, requeue, lambda: self._inner.nack(requeue=requeue))

    def reject(self, *, requeue: bool = True) -> None:
        """Reject (in a settle span)."""
        self._telemetry._settle(
            "reject", self, requeue, lambda: self._inner.reject(requeue=requeue)
        )

    def __repr__(self) -> str:
        return repr(self._inner)


# ---------------------------------------------------------------- logs with context


class TraceContextFilter(logging.Filter):
    """Adds ``trace_id`` and ``span_id`` (hex; empty outside a span, or without the
    OpenTelemetry API) to every record it sees: put it on a handler, then a format like
    ``"%(message)s trace=%(trace_id)s"`` (or a JSON formatter) shows them."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Add the fields; never drops a record."""
        trace_id = span_id = ""
        try:
            from opentelemetry import trace
        except ImportError:
            pass
        else:
            context = trace.get_current_span().get_span_context()
            if context.is_valid:
                trace_id = format(context.trace_id, "032x")
                span_id = format(context.span_id, "016x")
        record.trace_id = trace_id
        record.span_id = span_id
        return True

"""An in-process message broker: ``kiwi_anyio.connect("memory://")``.

For tests, demos and single-process applications: no RabbitMQ, no sockets, no threads. It
offers the part of :mod:`kiwi_anyio.protocol.client` the
:class:`~kiwi_anyio.Communicator` uses (:func:`connect` gives a :class:`MemoryConnection`,
whose channels have the same method names and signatures as
:class:`~kiwi_anyio.protocol.Channel`), with RabbitMQ's observable semantics::

    async with kiwi_anyio.memory.connect("demo") as conn:
        async with conn.channel(publisher_confirms=True) as ch:
            await ch.queue_declare("hello")
            await ch.basic_publish(b"hi", routing_key="hello")
            async with ch.basic_consume("hello") as consumer:
                async for message in consumer:
                    message.ack()
                    break

**It is not durable.** Queues, exchanges and messages live in this process's memory only and
are lost when it exits, whatever ``durable`` or ``delivery_mode`` say.

Brokers are named and per process: ``memory://`` is the broker ``"default"``,
``memory://name`` the broker ``"name"``. Every connection to one name in the process shares
its queues and exchanges; different names are separate brokers. A broker's state lives until
the process ends, even without connections; :func:`reset` forgets it (for tests).

What it does as RabbitMQ does:

* exchanges ``direct``, ``fanout`` and ``topic`` (``*`` is one word, ``#`` zero or more,
  words split on ``.``), the default exchange ``""`` (routes to the queue named by the
  routing key), ``amq.direct``/``amq.fanout``/``amq.topic``, exchange-to-exchange bindings,
  ``internal`` exchanges;
* redeclaring with other properties closes the channel with 406 (``type``, ``durable``,
  ``auto_delete``, ``internal``; for queues ``durable``, ``auto_delete`` and the ``x-``
  arguments RabbitMQ compares), a missing queue or exchange with 404, an exclusive queue of
  another connection with 405, reserved ``amq.`` names and the default exchange with 403;
* server-named queues (``amq.gen-…``), exclusive queues (deleted when their connection
  closes), auto-delete queues (deleted when their last consumer goes) and exchanges (deleted
  when their last binding goes), idempotent ``queue_delete``/``exchange_delete``,
  ``if_unused``/``if_empty``, the empty-queue-name shortcut (the channel's last declared
  queue);
* ``mandatory`` publishes nothing routes raise :class:`~kiwi_anyio.MessageReturned`
  (312 NO_ROUTE) on a confirm channel and are logged otherwise, as the AMQP client does;
  publishing to a missing exchange closes the channel with 404 (raised on a confirm channel;
  on a plain channel the next operation raises, as with RabbitMQ);
* deliveries round-robin between a queue's consumers, each limited by its ``basic_qos``
  prefetch (per consumer, for consumers created after it; ``global_=True`` is applied per
  consumer, as RabbitMQ 4.3 denies global QoS by default; ``0``: unlimited; ``no_ack``
  consumers unlimited); ``basic_get`` ignores prefetch;
* a queue that is neither durable nor exclusive is refused with 541 INTERNAL_ERROR, as
  RabbitMQ 4.3 does by default (deprecated feature ``transient_nonexcl_queues``);
* ``nack``/``reject`` with requeue, a cancelled consumer's undelivered buffer, and every
  unacknowledged message of a closed channel or connection go back to their queue at their
  original position (in front of every message never delivered), flagged ``redelivered``;
* an unknown delivery tag closes the channel with 406 PRECONDITION_FAILED; a reused consumer
  tag with 530; an exclusive consumer on a consumed queue with 403; deleting a consumed queue
  cancels its consumers (iteration raises :class:`~kiwi_anyio.ConsumerCancelled`).

Where it differs from RabbitMQ:

* Not durable (see above), no disk, no memory or disk alarms, no flow control: publishing
  never waits, and consumer buffers are unbounded (bound them with prefetch).
* Everything happens synchronously at the call: a publish is routed and handed to the
  consumers' buffers before ``basic_publish`` returns, so publisher confirms are immediate
  and ordering across channels is exactly the call order.
* An unknown delivery tag in ``basic_ack``/``basic_nack``/``basic_reject`` raises
  :class:`~kiwi_anyio.ChannelClosed` (406) right away instead of only closing the channel.
* Errors RabbitMQ treats as connection errors (an unknown exchange type, 503; a reused
  consumer tag, 530; ``prefetch_size``, 540) close only the channel here.
* Ignored arguments (accepted and compared on redeclare, without effect): message and queue
  TTLs (``x-message-ttl``, ``x-expires``, the ``expiration`` property), length limits,
  dead-lettering (a message nacked without requeue is dropped), priorities,
  ``x-queue-type`` (every queue behaves as a classic queue), single active consumer,
  ``alternate-exchange``, consumer arguments. ``headers`` exchanges are not supported (503).
* One event loop per broker: all connections open at the same time on one broker must belong
  to the same event loop (a connection from another loop raises :class:`RuntimeError`; use
  another name). Once every connection closed, another loop may use it.
* Bodies are copied (as ``bytes``) at publish; ``Basic.Properties`` objects are shared between
  the publisher and every delivery, so treat them as immutable.
"""

from __future__ import annotations

import heapq
import logging
import math
import platform
import secrets
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Generator, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from operator import attrgetter
from types import TracebackType
from typing import Any, Final, Self, TypeVar

import anyio
import anyio.lowlevel
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from pamqp import commands

from ._version import __version__
from .exceptions import ChannelClosed, ConnectionClosed, ConsumerCancelled, MessageReturned
from .protocol import _methods as methods

__all__ = [
    "MemoryChannel",
    "MemoryConnection",
    "MemoryConsumer",
    "MemoryMessage",
    "connect",
    "reset",
    "reset_all",
]

logger = logging.getLogger(__name__)

Properties = commands.Basic.Properties
FieldTable = Mapping[str, object]
T = TypeVar("T")

PRODUCT: Final = "kiwi_anyio memory broker"
EXCHANGE_TYPES: Final = frozenset({"direct", "fanout", "topic"})
CHANNEL_MAX: Final = 2047
_VHOST: Final = "/"
# the queue arguments RabbitMQ compares when a queue is declared again
_COMPARED_QUEUE_ARGUMENTS: Final = (
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-expires",
    "x-max-length",
    "x-max-length-bytes",
    "x-max-priority",
    "x-message-ttl",
    "x-overflow",
    "x-queue-mode",
    "x-queue-type",
    "x-single-active-consumer",
)


class _Refused(Exception):
    """A broker error: the channel that asked is closed with this code and text."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(code, text)
        self.code = code
        self.text = text


def _not_found(kind: str, name: str) -> _Refused:
    return _Refused(404, f"NOT_FOUND - no {kind} '{name}' in vhost '{_VHOST}'")


def _inequivalent(kind: str, name: str, arg: str, received: object, current: object) -> _Refused:
    return _Refused(
        406,
        f"PRECONDITION_FAILED - inequivalent arg '{arg}' for {kind} '{name}' in vhost "
        f"'{_VHOST}': received {received!r} but current is {current!r}",
    )


def _transient_nonexclusive_refused() -> _Refused:
    """What RabbitMQ 4.3 answers (by default) to a queue neither durable nor exclusive."""
    return _Refused(
        541,
        "INTERNAL_ERROR - Feature `transient_nonexcl_queues` is deprecated.\n"
        "Its use is not permitted by default (RabbitMQ 4.3): a queue must be durable "
        "(with x-expires to expire) or exclusive",
    )


def _default_exchange_refused() -> _Refused:
    return _Refused(403, "ACCESS_REFUSED - operation not permitted on the default exchange")


def _reserved(kind: str, name: str) -> _Refused:
    return _Refused(403, f"ACCESS_REFUSED - {kind} name '{name}' contains reserved prefix 'amq.*'")


def _generated(prefix: str) -> str:
    return f"{prefix}-{secrets.token_urlsafe(16)}"


@lru_cache(maxsize=4096)
def _topic_matches(pattern: str, routing_key: str) -> bool:
    """AMQP topic matching: ``*`` is exactly one word, ``#`` zero or more; words split on ``.``.

    An empty key or pattern has no words (so ``#`` matches ``""`` and ``*`` does not).
    """
    pat = pattern.split(".") if pattern else []
    words = routing_key.split(".") if routing_key else []

    def closure(states: set[int]) -> set[int]:
        todo = list(states)
        while todo:  # '#' may match nothing: skip over it
            i = todo.pop()
            if i < len(pat) and pat[i] == "#" and i + 1 not in states:
                states.add(i + 1)
                todo.append(i + 1)
        return states

    states = closure({0})
    for word in words:
        step: set[int] = set()
        for i in states:
            if i < len(pat):
                if pat[i] == "#":
                    step.add(i)
                elif pat[i] == "*" or pat[i] == word:
                    step.add(i + 1)
        if not step:
            return False
        states = closure(step)
    return len(pat) in states


def _freeze(arguments: FieldTable) -> str:
    return repr(sorted(arguments.items()))


# --------------------------------------------------------------------------- broker state


@dataclass(eq=False, slots=True)
class _Envelope:
    """One message in one queue; ``seq`` is its position for requeueing."""

    seq: int
    body: bytes
    properties: Properties
    exchange: str
    routing_key: str
    redelivered: bool = False


@dataclass(eq=False, slots=True)
class _Binding:
    kind: str  # "queue" or "exchange"
    destination: str
    routing_key: str
    arguments: dict[str, object]


@dataclass(eq=False, slots=True)
class _Exchange:
    name: str
    type: str
    durable: bool
    auto_delete: bool
    internal: bool
    arguments: dict[str, object]
    bindings: dict[tuple[str, str, str, str], _Binding] = field(default_factory=dict)

    def matches(self, binding: _Binding, routing_key: str) -> bool:
        if self.type == "fanout":
            return True
        if self.type == "topic":
            return _topic_matches(binding.routing_key, routing_key)
        return binding.routing_key == routing_key


class _Queue:
    __slots__ = (
        "_seq",
        "arguments",
        "auto_delete",
        "consumers",
        "deleted",
        "durable",
        "exclusive_consumer",
        "name",
        "owner",
        "ready",
    )

    def __init__(
        self,
        name: str,
        *,
        durable: bool,
        owner: MemoryConnection | None,
        auto_delete: bool,
        arguments: dict[str, object],
    ) -> None:
        self.name = name
        self.durable = durable
        self.owner = owner
        self.auto_delete = auto_delete
        self.arguments = arguments
        self.ready: deque[_Envelope] = deque()
        self.consumers: list[MemoryConsumer] = []
        self.exclusive_consumer: MemoryConsumer | None = None
        self.deleted = False
        self._seq = 0

    def put(self, body: bytes, properties: Properties, exchange: str, routing_key: str) -> None:
        self._seq += 1
        self.ready.append(_Envelope(self._seq, body, properties, exchange, routing_key))

    def requeue(self, envelopes: list[_Envelope]) -> None:
        """Put delivered messages back at their original position, flagged redelivered."""
        if self.deleted or not envelopes:
            return
        for envelope in envelopes:
            envelope.redelivered = True
        envelopes.sort(key=attrgetter("seq"))
        ready = self.ready
        if not ready or envelopes[-1].seq < ready[0].seq:
            ready.extendleft(reversed(envelopes))
        else:
            self.ready = deque(heapq.merge(ready, envelopes, key=attrgetter("seq")))

    def dispatch(self) -> None:
        """Hand ready messages to consumers with room, round robin."""
        consumers = self.consumers
        while self.ready and consumers:
            consumer = next((c for c in consumers if c._has_room()), None)
            if consumer is None:
                return
            consumers.remove(consumer)
            consumers.append(consumer)  # the next delivery tries the others first
            consumer._deliver(self, self.ready.popleft())


class _Broker:
    """The state of one named broker: exchanges, queues and bindings."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.exchanges: dict[str, _Exchange] = {
            f"amq.{kind}": _Exchange(f"amq.{kind}", kind, True, False, False, {})
            for kind in ("direct", "fanout", "topic")
        }
        self.queues: dict[str, _Queue] = {}
        self.connections: set[MemoryConnection] = set()
        self.loop: object | None = None

    def __repr__(self) -> str:
        return f"<memory broker {self.name!r}>"

    # ------------------------------------------------------------ connections

    def attach(self, connection: MemoryConnection) -> None:
        loop = _current_loop()
        if self.connections and loop is not None and self.loop is not None and loop != self.loop:
            raise RuntimeError(
                f"memory broker {self.name!r} is in use by connections of another event loop "
                "(one event loop per broker: use another name, e.g. memory://other)"
            )
        if not self.connections:
            self.loop = loop
        self.connections.add(connection)

    def detach(self, connection: MemoryConnection) -> None:
        for queue in [q for q in self.queues.values() if q.owner is connection]:
            self.delete_queue(queue)
        self.connections.discard(connection)
        if not self.connections:
            self.loop = None

    # ------------------------------------------------------------ exchanges

    def exchange(self, name: str) -> _Exchange:
        exchange = self.exchanges.get(name)
        if exchange is None:
            raise _not_found("exchange", name)
        return exchange

    def exchange_declare(
        self,
        name: str,
        exchange_type: str,
        *,
        passive: bool,
        durable: bool,
        auto_delete: bool,
        internal: bool,
        arguments: FieldTable,
    ) -> None:
        if passive:
            if not name:
                raise _default_exchange_refused()
            self.exchange(name)
            return
        if exchange_type not in EXCHANGE_TYPES:
            raise _Refused(
                503,
                f"COMMAND_INVALID - unknown exchange type '{exchange_type}' (the memory broker "
                f"supports {', '.join(sorted(EXCHANGE_TYPES))})",
            )
        if not name:
            raise _default_exchange_refused()
        existing = self.exchanges.get(name)
        if existing is None:
            if name.startswith("amq."):
                raise _reserved("exchange", name)
            self.exchanges[name] = _Exchange(
                name, exchange_type, durable, auto_delete, internal, dict(arguments)
            )
            return
        for arg, received, current in (
            ("type", exchange_type, existing.type),
            ("durable", durable, existing.durable),
            ("auto_delete", auto_delete, existing.auto_delete),
            ("internal", internal, existing.internal),
        ):
            if received != current:
                raise _inequivalent("exchange", name, arg, received, current)

    def exchange_delete(self, name: str, *, if_unused: bool) -> None:
        if not name:
            raise _default_exchange_refused()
        if name.startswith("amq."):
            raise _Refused(
                403, f"ACCESS_REFUSED - deletion of system exchange '{name}' not allowed"
            )
        exchange = self.exchanges.get(name)
        if exchange is None:
            return
        if if_unused and exchange.bindings:
            raise _Refused(
                406, f"PRECONDITION_FAILED - exchange '{name}' in vhost '{_VHOST}' in use"
            )
        self._delete_exchange(exchange)

    def _delete_exchange(self, exchange: _Exchange) -> None:
        if self.exchanges.get(exchange.name) is not exchange:
            return
        del self.exchanges[exchange.name]
        exchange.bindings.clear()
        self._unbind_destination("exchange", exchange.name)

    def _unbind_destination(self, kind: str, name: str) -> None:
        for exchange in list(self.exchanges.values()):
            keys = [
                key
                for key, binding in exchange.bindings.items()
                if binding.kind == kind and binding.destination == name
            ]
            for key in keys:
                del exchange.bindings[key]
            if keys:
                self._unbound(exchange)

    def _unbound(self, exchange: _Exchange) -> None:
        if exchange.auto_delete and not exchange.bindings:
            self._delete_exchange(exchange)

    def bind(
        self,
        kind: str,
        destination: str,
        source: str,
        routing_key: str,
        arguments: FieldTable,
        *,
        add: bool,
    ) -> None:
        if not source:
            raise _default_exchange_refused()
        exchange = self.exchange(source)
        if kind == "exchange":
            if not destination:
                raise _default_exchange_refused()
            self.exchange(destination)
        key = (kind, destination, routing_key, _freeze(arguments))
        if add:
            exchange.bindings.setdefault(
                key, _Binding(kind, destination, routing_key, dict(arguments))
            )
        elif exchange.bindings.pop(key, None) is not None:
            self._unbound(exchange)

    # ------------------------------------------------------------ queues

    def queue(self, connection: MemoryConnection, name: str) -> _Queue:
        """The queue ``name``, if this connection may use it (404, 405)."""
        queue = self.queues.get(name)
        if queue is None:
            raise _not_found("queue", name)
        if queue.owner is not None and queue.owner is not connection:
            raise _locked(name)
        return queue

    def queue_declare(
        self,
        connection: MemoryConnection,
        name: str,
        *,
        passive: bool,
        durable: bool,
        exclusive: bool,
        auto_delete: bool,
        arguments: FieldTable,
    ) -> _Queue:
        if passive:
            return self.queue(connection, name)
        if not name:
            name = _generated("amq.gen")
        elif name.startswith("amq."):
            raise _reserved("queue", name)
        owner = connection if exclusive else None
        existing = self.queues.get(name)
        if existing is None:
            if not durable and not exclusive:
                raise _transient_nonexclusive_refused()
            queue = _Queue(
                name,
                durable=durable,
                owner=owner,
                auto_delete=auto_delete,
                arguments=dict(arguments),
            )
            self.queues[name] = queue
            return queue
        if existing.owner is not owner:
            raise _locked(name)
        if existing.durable != durable:
            raise _inequivalent("queue", name, "durable", durable, existing.durable)
        if existing.auto_delete != auto_delete:
            raise _inequivalent("queue", name, "auto_delete", auto_delete, existing.auto_delete)
        for arg in _COMPARED_QUEUE_ARGUMENTS:
            received, current = arguments.get(arg), existing.arguments.get(arg)
            if arg == "x-queue-type":
                received, current = received or "classic", current or "classic"
            if received != current:
                raise _inequivalent("queue", name, arg, received, current)
        return existing

    def queue_delete(
        self, connection: MemoryConnection, name: str, *, if_unused: bool, if_empty: bool
    ) -> int:
        if name not in self.queues:
            return 0
        queue = self.queue(connection, name)
        if if_unused and queue.consumers:
            raise _Refused(406, f"PRECONDITION_FAILED - queue '{name}' in vhost '{_VHOST}' in use")
        if if_empty and queue.ready:
            raise _Refused(
                406, f"PRECONDITION_FAILED - queue '{name}' in vhost '{_VHOST}' is not empty"
            )
        count = len(queue.ready)
        self.delete_queue(queue)
        return count

    def delete_queue(self, queue: _Queue) -> None:
        if self.queues.get(queue.name) is not queue:
            return
        del self.queues[queue.name]
        queue.deleted = True
        queue.ready.clear()
        consumers, queue.consumers = queue.consumers, []
        queue.exclusive_consumer = None
        for consumer in consumers:
            consumer._cancelled_by_broker()
        self._unbind_destination("queue", queue.name)

    def consumer_gone(self, queue: _Queue) -> None:
        """A consumer of ``queue`` went away: auto-delete it, or give others its messages."""
        if queue.deleted:
            return
        if queue.auto_delete and not queue.consumers:
            self.delete_queue(queue)
        else:
            queue.dispatch()

    # ------------------------------------------------------------ publishing

    def route(self, exchange: str, routing_key: str) -> list[_Queue]:
        if not exchange:
            queue = self.queues.get(routing_key)
            return [queue] if queue is not None else []
        source = self.exchange(exchange)
        if source.internal:
            raise _Refused(
                403,
                f"ACCESS_REFUSED - cannot publish to internal exchange '{exchange}' in vhost "
                f"'{_VHOST}'",
            )
        found: dict[str, _Queue] = {}
        seen: set[str] = set()
        todo = [source]
        while todo:
            current = todo.pop()
            if current.name in seen:
                continue
            seen.add(current.name)
            for binding in current.bindings.values():
                if not current.matches(binding, routing_key):
                    continue
                if binding.kind == "queue":
                    queue = self.queues.get(binding.destination)
                    if queue is not None:
                        found.setdefault(queue.name, queue)
                else:
                    nested = self.exchanges.get(binding.destination)
                    if nested is not None:
                        todo.append(nested)
        return list(found.values())

    def publish(self, exchange: str, routing_key: str, body: bytes, properties: Properties) -> bool:
        """Route a message into its queues and deliver it; False if nothing routed it."""
        queues = self.route(exchange, routing_key)
        for queue in queues:
            queue.put(body, properties, exchange, routing_key)
        for queue in queues:
            queue.dispatch()
        return bool(queues)


def _locked(name: str) -> _Refused:
    return _Refused(
        405,
        f"RESOURCE_LOCKED - cannot obtain exclusive access to locked queue '{name}' in vhost "
        f"'{_VHOST}'. It could be originally declared on another connection or the exclusive "
        "property value does not match that of the original declaration.",
    )


def _current_loop() -> object | None:
    """An identity of the running event loop (None if this anyio cannot tell)."""
    current_token: Callable[[], object] | None = getattr(anyio.lowlevel, "current_token", None)
    return current_token() if current_token is not None else None


_brokers: dict[str, _Broker] = {}
_brokers_lock = threading.Lock()
_announced = False


def _broker_name(name: str) -> str:
    if name.startswith("memory://"):
        name = name[len("memory://") :]
    return name.strip("/") or "default"


def _get_broker(name: str) -> _Broker:
    global _announced
    with _brokers_lock:
        broker = _brokers.get(name)
        if broker is None:
            broker = _brokers[name] = _Broker(name)
        announce = not _announced
        _announced = True
    if announce:
        logger.info(
            "using the in-process memory:// broker %r: it is not durable, its queues and "
            "messages live in this process only and are lost when it exits",
            name,
        )
    return broker


def reset(name: str = "default") -> None:
    """Forget the broker ``name`` (``"x"`` or ``"memory://x"``): its queues, exchanges and
    messages.

    Connections open on it keep using the forgotten state; new connections get a fresh broker.
    """
    with _brokers_lock:
        _brokers.pop(_broker_name(name), None)


def reset_all() -> None:
    """Forget every memory broker of this process (see :func:`reset`)."""
    with _brokers_lock:
        _brokers.clear()


# --------------------------------------------------------------------------- client surface


@dataclass(eq=False, slots=True)
class _Unacked:
    queue: _Queue
    envelope: _Envelope
    consumer: MemoryConsumer | None


class MemoryMessage:
    """A message from :meth:`MemoryChannel.basic_consume` or :meth:`MemoryChannel.basic_get`.

    The same attributes and methods as :class:`kiwi_anyio.protocol.Message`.

    Attributes:
        body: the message body.
        properties: the ``Basic.Properties`` (shared with the publisher: do not modify).
        delivery_tag: the channel's tag for this delivery.
        redelivered: True if the broker delivered it before.
        exchange: the exchange it was published to.
        routing_key: its routing key.
        consumer_tag: the consumer it was delivered to (None for ``basic_get``).
        message_count: messages left in the queue (``basic_get`` only).
        no_ack: True if it needs no acknowledgement.
    """

    __slots__ = (
        "_channel",
        "_settled",
        "body",
        "consumer_tag",
        "delivery_tag",
        "exchange",
        "message_count",
        "no_ack",
        "properties",
        "redelivered",
        "routing_key",
    )

    def __init__(
        self,
        channel: MemoryChannel,
        envelope: _Envelope,
        delivery_tag: int,
        *,
        no_ack: bool,
        consumer_tag: str | None = None,
        message_count: int | None = None,
    ) -> None:
        self._channel = channel
        self.body = envelope.body
        self.properties = envelope.properties
        self.delivery_tag = delivery_tag
        self.redelivered = envelope.redelivered
        self.exchange = envelope.exchange
        self.routing_key = envelope.routing_key
        self.consumer_tag = consumer_tag
        self.message_count = message_count
        self.no_ack = no_ack
        self._settled = no_ack

    @property
    def channel(self) -> MemoryChannel:
        """The channel the message arrived on; acks go back on it."""
        return self._channel

    @property
    def settled(self) -> bool:
        """True once acked, nacked or rejected (always True for ``no_ack`` deliveries)."""
        return self._settled

    def _settle(self) -> None:
        if self._settled:
            raise RuntimeError(f"delivery {self.delivery_tag} was already acknowledged")
        self._settled = True

    def ack(self) -> None:
        """Acknowledge the message.

        Raises:
            ChannelClosed: the channel is closed; the message went back to its queue.
            RuntimeError: the message was already acknowledged.
        """
        self._channel._check()
        self._settle()
        self._channel.basic_ack(self.delivery_tag)

    def nack(self, *, requeue: bool = True) -> None:
        """Negatively acknowledge the message; ``requeue=False`` drops it."""
        self._channel._check()
        self._settle()
        self._channel.basic_nack(self.delivery_tag, requeue=requeue)

    def reject(self, *, requeue: bool = True) -> None:
        """Reject the message; ``requeue=False`` drops it."""
        self._channel._check()
        self._settle()
        self._channel.basic_reject(self.delivery_tag, requeue=requeue)

    def __repr__(self) -> str:
        return (
            f"<MemoryMessage tag={self.delivery_tag} exchange={self.exchange!r} "
            f"routing_key={self.routing_key!r} {len(self.body)} bytes>"
        )


def _drain(stream: MemoryObjectReceiveStream[MemoryMessage]) -> list[MemoryMessage]:
    items = []
    while True:
        try:
            items.append(stream.receive_nowait())
        except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
            return items


class MemoryConsumer:
    """An async iterator of :class:`MemoryMessage` for one consumer of a queue.

    Use it as an async context manager: entering starts it, leaving cancels it (messages
    delivered to it but not yet taken from the iterator go back to the queue; taken ones stay
    unacknowledged until settled or the channel closes).

    Raises (from iteration):
        ConsumerCancelled: the queue was deleted.
        ChannelClosed: the channel was closed.
    """

    def __init__(
        self,
        channel: MemoryChannel,
        queue: str,
        *,
        no_ack: bool,
        exclusive: bool,
        consumer_tag: str,
    ) -> None:
        self._channel = channel
        self.queue = queue
        self.no_ack = no_ack
        self.exclusive = exclusive
        self.consumer_tag = consumer_tag
        self.prefetch_count = 0
        self._unacked = 0
        self._queue: _Queue | None = None
        self._send: MemoryObjectSendStream[MemoryMessage] | None = None
        self._receive: MemoryObjectReceiveStream[MemoryMessage] | None = None
        self._error: BaseException | None = None

    def __repr__(self) -> str:
        return f"<MemoryConsumer {self.consumer_tag!r} of queue {self.queue!r}>"

    async def start(self) -> Self:
        """Register the consumer with its queue. ``async with`` calls it.

        Raises:
            ChannelClosed: 404 no such queue, 405 another connection's exclusive queue,
                403 the queue has an exclusive consumer, 530 the consumer tag is taken.
        """
        await anyio.lowlevel.checkpoint()
        if self._send is not None:
            raise RuntimeError(f"{self!r} was already started")
        self._send, self._receive = anyio.create_memory_object_stream[MemoryMessage](math.inf)
        try:
            self._channel._run(lambda: self._channel._register(self))
        except BaseException:
            self._close_streams()
            raise
        return self

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.cancel()

    async def cancel(self) -> None:
        """Stop consuming; idempotent. Undelivered buffered messages go back to the queue."""
        self._cancel()
        await anyio.lowlevel.cancel_shielded_checkpoint()

    def _cancel(self) -> None:
        channel = self._channel
        if channel._consumers.get(self.consumer_tag) is not self:
            self._close_streams()
            return
        del channel._consumers[self.consumer_tag]
        queue = self._detach()
        drained = self._close_streams()
        if not self.no_ack:
            records = []
            for message in drained:
                if not message._settled:
                    message._settled = True
                    record = channel._unacked.pop(message.delivery_tag, None)
                    if record is not None:
                        records.append(record)
            channel._settle(records, requeue=True)
        if queue is not None:
            channel._broker.consumer_gone(queue)

    def _detach(self) -> _Queue | None:
        queue, self._queue = self._queue, None
        if queue is not None:
            if self in queue.consumers:
                queue.consumers.remove(self)
            if queue.exclusive_consumer is self:
                queue.exclusive_consumer = None
        return queue

    def _close_streams(self) -> list[MemoryMessage]:
        drained: list[MemoryMessage] = []
        if self._send is not None:
            self._send.close()
        if self._receive is not None:
            drained = _drain(self._receive)
            self._receive.close()
        return drained

    def _fail(self, error: BaseException) -> list[MemoryMessage]:
        self._error = error
        return self._close_streams()

    def _cancelled_by_broker(self) -> None:
        """Its queue was deleted: end the iteration with ConsumerCancelled."""
        channel = self._channel
        if channel._consumers.get(self.consumer_tag) is self:
            del channel._consumers[self.consumer_tag]
        self._queue = None
        drained = self._fail(
            ConsumerCancelled(
                0, f"the broker cancelled consumer {self.consumer_tag!r} of queue {self.queue!r}"
            )
        )
        channel._settle(
            [
                record
                for message in drained
                if (record := channel._unacked.pop(message.delivery_tag, None)) is not None
            ],
            requeue=False,
        )

    def _has_room(self) -> bool:
        if self.no_ack:
            return True
        return not self.prefetch_count or self._unacked < self.prefetch_count

    def _deliver(self, queue: _Queue, envelope: _Envelope) -> None:
        channel = self._channel
        tag = channel._next_tag()
        if not self.no_ack:
            channel._unacked[tag] = _Unacked(queue, envelope, self)
            self._unacked += 1
        message = MemoryMessage(
            channel, envelope, tag, no_ack=self.no_ack, consumer_tag=self.consumer_tag
        )
        assert self._send is not None
        self._send.send_nowait(message)

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> MemoryMessage:
        if self._receive is None:
            raise RuntimeError(f"{self!r} was not started (use `async with`)")
        try:
            return await self._receive.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            if self._error is not None:
                raise self._error from None
            raise StopAsyncIteration from None


class MemoryChannel:
    """A channel of a :class:`MemoryConnection`: ``async with conn.channel() as ch:``.

    The methods of :class:`kiwi_anyio.protocol.Channel`, with the same names, signatures and
    errors: a broker error closes the channel with :class:`~kiwi_anyio.ChannelClosed`
    (reply code and text as RabbitMQ's) and the connection stays usable.
    """

    def __init__(self, connection: MemoryConnection, number: int, publisher_confirms: bool) -> None:
        self._connection = connection
        self._broker = connection._broker
        self.number = number
        self.publisher_confirms = publisher_confirms
        self._consumers: dict[str, MemoryConsumer] = {}
        self._unacked: dict[int, _Unacked] = {}
        self._tag = 0
        self._prefetch = 0
        self._last_queue = ""
        self._closed: ChannelClosed | None = None

    def __repr__(self) -> str:
        return f"<MemoryChannel {self.number} of {self._connection}>"

    @property
    def is_open(self) -> bool:
        """True until the channel is closed, by us or by the broker."""
        return self._closed is None

    @property
    def close_reason(self) -> ChannelClosed | None:
        """Why the channel closed, or None while it is open."""
        return self._closed

    def _check(self) -> None:
        if self._closed is not None:
            raise self._closed
        self._connection._check()

    def _run(self, operation: Callable[[], T]) -> T:
        """Run a broker operation; a broker error closes the channel and raises."""
        self._check()
        try:
            return operation()
        except _Refused as exc:
            raise self._fail(exc.code, exc.text) from None

    def _fail(self, code: int, text: str) -> ChannelClosed:
        error = ChannelClosed(
            code, text, f"channel {self.number} closed by the broker: {code} {text}"
        )
        logger.warning("%s: broker closed channel %s: %s %s", self, self.number, code, text)
        self._close(error)
        return error

    def _close(self, error: ChannelClosed) -> None:
        """Close now: fail the consumers and requeue every unacknowledged message."""
        if self._closed is not None:
            return
        self._closed = error
        records = list(self._unacked.values())
        self._unacked.clear()
        consumers = list(self._consumers.values())
        self._consumers.clear()
        queues = []
        for consumer in consumers:
            queue = consumer._detach()
            consumer._fail(error)
            if queue is not None:
                queues.append(queue)
        self._settle(records, requeue=True)
        self._connection._channels.pop(self.number, None)
        for queue in queues:
            self._broker.consumer_gone(queue)

    def _queue_name(self, queue: str) -> str:
        """AMQP's shortcut: an empty queue name is the channel's last declared queue."""
        if queue:
            return queue
        if not self._last_queue:
            raise _Refused(404, "NOT_FOUND - no previously declared queue")
        return self._last_queue

    def _next_tag(self) -> int:
        self._tag += 1
        return self._tag

    def _register(self, consumer: MemoryConsumer) -> None:
        tag = consumer.consumer_tag or _generated("amq.ctag")
        if tag in self._consumers:
            raise _Refused(530, f"NOT_ALLOWED - attempt to reuse consumer tag '{tag}'")
        queue = self._broker.queue(self._connection, self._queue_name(consumer.queue))
        if queue.exclusive_consumer is not None or (consumer.exclusive and queue.consumers):
            raise _Refused(
                403, f"ACCESS_REFUSED - queue '{queue.name}' in vhost '{_VHOST}' in exclusive use"
            )
        consumer.consumer_tag = tag
        consumer.prefetch_count = self._prefetch
        consumer._queue = queue
        self._consumers[tag] = consumer
        queue.consumers.append(consumer)
        if consumer.exclusive:
            queue.exclusive_consumer = consumer
        queue.dispatch()

    def _take(self, delivery_tag: int, multiple: bool) -> list[_Unacked]:
        unacked = self._unacked
        if multiple and delivery_tag == 0:
            records = list(unacked.values())
            unacked.clear()
            return records
        if delivery_tag not in unacked:
            raise self._fail(406, f"PRECONDITION_FAILED - unknown delivery tag {delivery_tag}")
        if not multiple:
            return [unacked.pop(delivery_tag)]
        tags = [tag for tag in unacked if tag <= delivery_tag]
        return [unacked.pop(tag) for tag in tags]

    def _settle(self, records: Iterable[_Unacked], *, requeue: bool) -> None:
        """Forget settled deliveries (requeueing them if asked) and deliver what now fits."""
        back: dict[_Queue, list[_Envelope]] = {}
        for record in records:
            if record.consumer is not None:
                record.consumer._unacked -= 1
            back.setdefault(record.queue, []).append(record.envelope)
        for queue, envelopes in back.items():
            if requeue:
                queue.requeue(envelopes)
        for queue in back:
            if not queue.deleted:
                queue.dispatch()

    # ------------------------------------------------------------ exchanges

    async def exchange_declare(
        self,
        exchange: str,
        exchange_type: str = "direct",
        *,
        passive: bool = False,
        durable: bool = False,
        auto_delete: bool = False,
        internal: bool = False,
        arguments: FieldTable | None = None,
    ) -> None:
        """Declare an exchange (``direct``, ``fanout`` or ``topic``).

        Raises:
            ChannelClosed: 406 it exists with another type, ``durable``, ``auto_delete`` or
                ``internal``; 404 ``passive`` and it does not exist; 403 a reserved name.
        """
        methods.Exchange.Declare(exchange=exchange, exchange_type=exchange_type)
        await anyio.lowlevel.checkpoint()
        self._run(
            lambda: self._broker.exchange_declare(
                exchange,
                exchange_type,
                passive=passive,
                durable=durable,
                auto_delete=auto_delete,
                internal=internal,
                arguments=arguments or {},
            )
        )

    async def exchange_delete(self, exchange: str, *, if_unused: bool = False) -> None:
        """Delete an exchange (a missing one is fine) and its bindings."""
        methods.Exchange.Delete(exchange=exchange)
        await anyio.lowlevel.checkpoint()
        self._run(lambda: self._broker.exchange_delete(exchange, if_unused=if_unused))

    async def exchange_bind(
        self,
        destination: str,
        source: str,
        routing_key: str = "",
        arguments: FieldTable | None = None,
    ) -> None:
        """Bind exchange ``destination`` to exchange ``source`` (a RabbitMQ extension)."""
        methods.Exchange.Bind(destination=destination, source=source, routing_key=routing_key)
        await anyio.lowlevel.checkpoint()
        self._run(
            lambda: self._broker.bind(
                "exchange", destination, source, routing_key, arguments or {}, add=True
            )
        )

    async def exchange_unbind(
        self,
        destination: str,
        source: str,
        routing_key: str = "",
        arguments: FieldTable | None = None,
    ) -> None:
        """Remove an exchange-to-exchange binding."""
        methods.Exchange.Unbind(destination=destination, source=source, routing_key=routing_key)
        await anyio.lowlevel.checkpoint()
        self._run(
            lambda: self._broker.bind(
                "exchange", destination, source, routing_key, arguments or {}, add=False
            )
        )

    # ------------------------------------------------------------ queues

    async def queue_declare(
        self,
        queue: str = "",
        *,
        passive: bool = False,
        durable: bool = False,
        exclusive: bool = False,
        auto_delete: bool = False,
        arguments: FieldTable | None = None,
    ) -> commands.Queue.DeclareOk:
        """Declare a queue; ``queue=""`` lets the broker name it (``amq.gen-…``).

        Returns:
            ``Queue.DeclareOk`` with ``queue`` (the name), ``message_count`` (ready messages)
            and ``consumer_count``.

        Raises:
            ChannelClosed: 405 another connection's exclusive queue (or ``exclusive`` differs);
                406 it exists with other ``durable``, ``auto_delete`` or arguments; 404
                ``passive`` and it does not exist; 403 a reserved ``amq.`` name.
        """
        methods.Queue.Declare(queue=queue)
        await anyio.lowlevel.checkpoint()

        def declare() -> _Queue:
            return self._broker.queue_declare(
                self._connection,
                self._queue_name(queue) if passive else queue,
                passive=passive,
                durable=durable,
                exclusive=exclusive,
                auto_delete=auto_delete,
                arguments=arguments or {},
            )

        declared = self._run(declare)
        self._last_queue = declared.name
        return methods.Queue.DeclareOk(
            queue=declared.name,
            message_count=len(declared.ready),
            consumer_count=len(declared.consumers),
        )

    async def queue_bind(
        self,
        queue: str,
        exchange: str,
        routing_key: str = "",
        arguments: FieldTable | None = None,
    ) -> None:
        """Bind a queue to an exchange (404 if either is missing)."""
        methods.Queue.Bind(queue=queue, exchange=exchange, routing_key=routing_key)
        await anyio.lowlevel.checkpoint()

        def bind() -> None:
            name = self._broker.queue(self._connection, self._queue_name(queue)).name
            key = routing_key if routing_key or queue else name
            self._broker.bind("queue", name, exchange, key, arguments or {}, add=True)

        self._run(bind)

    async def queue_unbind(
        self,
        queue: str,
        exchange: str,
        routing_key: str = "",
        arguments: FieldTable | None = None,
    ) -> None:
        """Remove a queue binding (404 if the queue or exchange is missing)."""
        methods.Queue.Unbind(queue=queue, exchange=exchange, routing_key=routing_key)
        await anyio.lowlevel.checkpoint()

        def unbind() -> None:
            name = self._broker.queue(self._connection, self._queue_name(queue)).name
            self._broker.bind("queue", name, exchange, routing_key, arguments or {}, add=False)

        self._run(unbind)

    async def queue_purge(self, queue: str) -> int:
        """Remove every ready message from a queue; returns how many."""
        methods.Queue.Purge(queue=queue)
        await anyio.lowlevel.checkpoint()

        def purge() -> int:
            found = self._broker.queue(self._connection, self._queue_name(queue))
            count = len(found.ready)
            found.ready.clear()
            return count

        return self._run(purge)

    async def queue_delete(
        self, queue: str, *, if_unused: bool = False, if_empty: bool = False
    ) -> int:
        """Delete a queue (a missing one is fine); returns how many ready messages it held.

        Its consumers are cancelled (:class:`~kiwi_anyio.ConsumerCancelled`).
        """
        methods.Queue.Delete(queue=queue)
        await anyio.lowlevel.checkpoint()
        return self._run(
            lambda: self._broker.queue_delete(
                self._connection, self._queue_name(queue), if_unused=if_unused, if_empty=if_empty
            )
        )

    # ------------------------------------------------------------ basic

    async def basic_qos(
        self, prefetch_count: int = 0, prefetch_size: int = 0, *, global_: bool = False
    ) -> None:
        """Limit unacknowledged deliveries per consumer created afterwards; 0 means no limit.

        ``global_=True`` is applied per consumer too, as RabbitMQ 4.3 does by default (its
        deprecated feature ``global_qos`` is denied)."""
        await anyio.lowlevel.checkpoint()

        def qos() -> None:
            if prefetch_size:
                raise _Refused(540, f"NOT_IMPLEMENTED - prefetch_size!=0 ({prefetch_size})")
            self._prefetch = prefetch_count

        self._run(qos)

    async def confirm_select(self) -> None:
        """Put the channel in publisher-confirm mode (publishes raise returns and errors)."""
        await anyio.lowlevel.checkpoint()
        self._check()
        self.publisher_confirms = True

    def basic_consume(
        self,
        queue: str,
        *,
        no_ack: bool = False,
        exclusive: bool = False,
        consumer_tag: str = "",
        arguments: FieldTable | None = None,
    ) -> MemoryConsumer:
        """Consume from a queue: ``async with ch.basic_consume(q) as consumer:``.

        The consumer is an async iterator of :class:`MemoryMessage`; ``consumer_tag`` is
        generated (``amq.ctag-…``) when empty. ``arguments`` are ignored.
        """
        methods.Basic.Consume(queue=queue, consumer_tag=consumer_tag)
        self._check()
        return MemoryConsumer(
            self, queue, no_ack=no_ack, exclusive=exclusive, consumer_tag=consumer_tag
        )

    async def basic_get(self, queue: str, *, no_ack: bool = False) -> MemoryMessage | None:
        """Fetch one message, or None if the queue is empty (prefetch does not apply)."""
        methods.Basic.Get(queue=queue)
        await anyio.lowlevel.checkpoint()

        def get() -> MemoryMessage | None:
            found = self._broker.queue(self._connection, self._queue_name(queue))
            if not found.ready:
                return None
            envelope = found.ready.popleft()
            tag = self._next_tag()
            if not no_ack:
                self._unacked[tag] = _Unacked(found, envelope, None)
            return MemoryMessage(self, envelope, tag, no_ack=no_ack, message_count=len(found.ready))

        return self._run(get)

    async def basic_cancel(self, consumer_tag: str) -> None:
        """Cancel a consumer by tag (prefer leaving the :class:`MemoryConsumer` block)."""
        consumer = self._consumers.get(consumer_tag)
        if consumer is not None:
            await consumer.cancel()
        else:
            await anyio.lowlevel.checkpoint()
            self._check()

    def basic_ack(self, delivery_tag: int, *, multiple: bool = False) -> None:
        """Acknowledge deliveries (``multiple``: every one up to ``delivery_tag``; 0: all).

        Raises:
            ChannelClosed: 406 the tag is not an unacknowledged delivery of this channel
                (the channel is closed).
        """
        self._check()
        self._settle(self._take(delivery_tag, multiple), requeue=False)

    def basic_nack(
        self, delivery_tag: int, *, multiple: bool = False, requeue: bool = True
    ) -> None:
        """Negatively acknowledge deliveries: requeued at their position, or dropped."""
        self._check()
        self._settle(self._take(delivery_tag, multiple), requeue=requeue)

    def basic_reject(self, delivery_tag: int, *, requeue: bool = True) -> None:
        """Reject one delivery: requeued at its position, or dropped."""
        self._check()
        self._settle(self._take(delivery_tag, False), requeue=requeue)

    async def basic_publish(
        self,
        body: bytes | bytearray | memoryview,
        *,
        exchange: str = "",
        routing_key: str = "",
        properties: Properties | None = None,
        mandatory: bool = False,
    ) -> None:
        """Publish a message: routed and delivered before this returns (``body`` is copied).

        Raises:
            MessageReturned: ``mandatory``, nothing routes it, and the channel is in confirm
                mode (otherwise the return is logged, as the AMQP client does).
            ChannelClosed: 404 no such exchange (on a confirm channel; otherwise the channel
                is closed and the next operation raises), 403 an internal exchange.
        """
        methods.Basic.Publish(exchange=exchange, routing_key=routing_key)
        if not isinstance(body, bytes | bytearray | memoryview):
            raise TypeError(f"the body must be bytes, not {type(body).__name__}")
        await anyio.lowlevel.checkpoint()
        self._publish_now(body, exchange, routing_key, properties, mandatory)

    def publish_nowait(
        self,
        body: bytes,
        *,
        exchange: str = "",
        routing_key: str = "",
        properties: Properties | None = None,
        mandatory: bool = False,
        on_confirm: Callable[[BaseException | None], object],
    ) -> None:
        """:meth:`basic_publish` without waiting: ``on_confirm(error)`` is called before
        this returns (``error`` None, or what ``basic_publish`` would have raised).

        Raises:
            ChannelClosed: the channel is closed.
        """
        methods.Basic.Publish(exchange=exchange, routing_key=routing_key)
        self._check()
        try:
            self._publish_now(body, exchange, routing_key, properties, mandatory)
        except (ChannelClosed, MessageReturned) as exc:
            on_confirm(exc)
        else:
            on_confirm(None)

    def _publish_now(
        self,
        body: bytes | bytearray | memoryview,
        exchange: str,
        routing_key: str,
        properties: Properties | None,
        mandatory: bool,
    ) -> None:
        self._check()
        data = bytes(body)
        props = properties if properties is not None else Properties()
        try:
            routed = self._broker.publish(exchange, routing_key, data, props)
        except _Refused as exc:
            error = self._fail(exc.code, exc.text)
            if self.publisher_confirms:
                raise error from None
            return
        if routed or not mandatory:
            return
        if self.publisher_confirms:
            raise MessageReturned(312, "NO_ROUTE", exchange, routing_key)
        logger.warning(
            "%s: message to %r/%r returned: %s %s", self, exchange, routing_key, 312, "NO_ROUTE"
        )

    async def flow(self, active: bool) -> bool:
        """``Channel.Flow``: as RabbitMQ, only ``active=True`` is supported (540 otherwise)."""
        await anyio.lowlevel.checkpoint()

        def flow() -> bool:
            if not active:
                raise _Refused(540, "NOT_IMPLEMENTED - active=false")
            return True

        return self._run(flow)

    async def aclose(self) -> None:
        """Close the channel; idempotent. Its consumers stop, and every unacknowledged
        message goes back to its queue."""
        if self._closed is None:
            for consumer in list(self._consumers.values()):
                consumer._cancel()
            self._close(ChannelClosed(200, "channel closed by the client"))
        await anyio.lowlevel.cancel_shielded_checkpoint()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class _MemoryChannelOpener:
    """``conn.channel()``: awaitable, and an async context manager that closes the channel."""

    def __init__(
        self, connection: MemoryConnection, publisher_confirms: bool, prefetch: int | None
    ) -> None:
        self._connection = connection
        self._confirms = publisher_confirms
        self._prefetch = prefetch
        self._channel: MemoryChannel | None = None

    async def _open(self) -> MemoryChannel:
        return await self._connection._open_channel(self._confirms, self._prefetch)

    def __await__(self) -> Generator[Any, None, MemoryChannel]:
        return self._open().__await__()

    async def __aenter__(self) -> MemoryChannel:
        self._channel = await self._open()
        return self._channel

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._channel is not None:
            await self._channel.aclose()


class MemoryConnection:
    """A connection to a memory broker. Get one with ``async with memory.connect(name)``.

    Attributes:
        name: the broker's name.
        server_properties: ``product``, ``version``, ``platform`` and ``capabilities``, as
            RabbitMQ's.
    """

    def __init__(self, broker: _Broker) -> None:
        self._broker = broker
        self.name = broker.name
        self._channels: dict[int, MemoryChannel] = {}
        self._closed = False
        self._closed_event = anyio.Event()
        self.server_properties: dict[str, Any] = {
            "product": PRODUCT,
            "version": __version__,
            "platform": f"Python {platform.python_version()}",
            "information": "in-process and not durable: messages are lost when the process ends",
            "capabilities": {
                "publisher_confirms": True,
                "exchange_exchange_bindings": True,
                "basic.nack": True,
                "consumer_cancel_notify": True,
                "per_consumer_qos": True,
                "connection.blocked": False,
                "authentication_failure_close": True,
            },
        }

    def __repr__(self) -> str:
        return f"<MemoryConnection memory://{self.name} at {id(self):#x}>"

    def __str__(self) -> str:
        return f"memory://{self.name}"

    @property
    def is_open(self) -> bool:
        """True until the connection closes."""
        return not self._closed

    @property
    def is_blocked(self) -> bool:
        """Always False: the memory broker never blocks publishers."""
        return False

    @property
    def failure(self) -> None:
        """Always None: a memory connection does not fail."""
        return None

    def _check(self) -> None:
        if self._closed:
            raise ConnectionClosed(200, "the connection is closed")

    async def wait_closed(self) -> None:
        """Wait until the connection is closed."""
        await self._closed_event.wait()

    def channel(
        self, *, publisher_confirms: bool = False, prefetch_count: int | None = None
    ) -> _MemoryChannelOpener:
        """Open a channel: ``async with conn.channel() as ch:`` (or ``ch = await conn.channel()``).

        Args:
            publisher_confirms: put the channel in confirm mode.
            prefetch_count: apply ``basic_qos(prefetch_count)`` right away.
        """
        return _MemoryChannelOpener(self, publisher_confirms, prefetch_count)

    async def _open_channel(self, publisher_confirms: bool, prefetch: int | None) -> MemoryChannel:
        await anyio.lowlevel.checkpoint()
        self._check()
        number = next((n for n in range(1, CHANNEL_MAX + 1) if n not in self._channels), None)
        if number is None:
            raise ChannelClosed(504, f"CHANNEL_ERROR - all {CHANNEL_MAX} channels are open")
        channel = MemoryChannel(self, number, publisher_confirms)
        if prefetch is not None:
            channel._prefetch = prefetch
        self._channels[number] = channel
        return channel

    def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        error = ChannelClosed(200, "the connection is closed")
        for channel in list(self._channels.values()):
            channel._close(error)
        self._channels.clear()
        self._broker.detach(self)
        self._closed_event.set()

    async def aclose(self) -> None:
        """Close the connection; idempotent. Every channel closes (unacknowledged messages go
        back to their queues) and the exclusive queues of this connection are deleted."""
        self._close()
        await anyio.lowlevel.cancel_shielded_checkpoint()


@asynccontextmanager
async def connect(name: str = "default") -> AsyncIterator[MemoryConnection]:
    """Connect to the memory broker ``name`` (``"x"`` or ``"memory://x"``; ``""`` is
    ``"default"``): ``async with memory.connect("x") as conn:``.

    The broker is created on first use and lives until the process ends (or :func:`reset`).
    Leaving the block closes the connection (see :meth:`MemoryConnection.aclose`).

    Raises:
        RuntimeError: the broker has open connections of another event loop.
    """
    await anyio.lowlevel.checkpoint()
    broker = _get_broker(_broker_name(name))
    connection = MemoryConnection(broker)
    broker.attach(connection)
    try:
        yield connection
    finally:
        connection._close()

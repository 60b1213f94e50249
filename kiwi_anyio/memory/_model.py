"""The memory broker's model: exchanges, queues, bindings, routing and dispatch.

Pure state and rules, as RabbitMQ applies them: declaring (and refusing, with RabbitMQ's reply
codes and texts, as :class:`Refused`), binding, routing a message to its queues, handing ready
messages to the consumers with room, requeueing at the original position. Every operation
runs to completion synchronously at the call.

Owns: :class:`Broker` and what it holds. Must not touch: anyio, channels, delivery tags,
acknowledgements, event loops, the registry of named brokers: consumers and connections are
opaque here (a consumer is any :class:`Subscriber`; a connection only an identity owning its
exclusive queues). The client side is :mod:`kiwi_anyio.memory._client`.
"""

from __future__ import annotations

import heapq
import secrets
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from operator import attrgetter
from typing import Final, Protocol

from pamqp import commands

__all__ = [
    "EXCHANGE_TYPES",
    "MAX_MESSAGE_SIZE",
    "VHOST",
    "Binding",
    "Broker",
    "Envelope",
    "Exchange",
    "MessageQueue",
    "Refused",
    "Subscriber",
    "generated_name",
]

Properties = commands.Basic.Properties
FieldTable = Mapping[str, object]


class Subscriber(Protocol):
    """What the model asks of a consumer (the client's ``MemoryConsumer``)."""

    def _has_room(self) -> bool:
        """True if its prefetch allows one more delivery."""
        ...

    def _deliver(self, queue: MessageQueue, envelope: Envelope) -> None:
        """Take ``envelope`` from ``queue`` (it is now unacknowledged, or settled if no_ack)."""
        ...

    def _cancelled_by_broker(self) -> None:
        """Its queue was deleted."""
        ...


EXCHANGE_TYPES: Final = frozenset({"direct", "fanout", "topic"})
MAX_MESSAGE_SIZE: Final = 16 * 1024 * 1024
"""The largest message body a broker takes: RabbitMQ 4's default ``max_message_size``."""
VHOST: Final = "/"
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


class Refused(Exception):
    """A broker error: the channel that asked is closed with this code and text."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(code, text)
        self.code = code
        self.text = text


def _not_found(kind: str, name: str) -> Refused:
    return Refused(404, f"NOT_FOUND - no {kind} '{name}' in vhost '{VHOST}'")


def _inequivalent(kind: str, name: str, arg: str, received: object, current: object) -> Refused:
    return Refused(
        406,
        f"PRECONDITION_FAILED - inequivalent arg '{arg}' for {kind} '{name}' in vhost "
        f"'{VHOST}': received {received!r} but current is {current!r}",
    )


def _transient_nonexclusive_refused() -> Refused:
    """What RabbitMQ 4.3 answers (by default) to a queue neither durable nor exclusive."""
    return Refused(
        541,
        "INTERNAL_ERROR - Feature `transient_nonexcl_queues` is deprecated.\n"
        "Its use is not permitted by default (RabbitMQ 4.3): a queue must be durable "
        "(with x-expires to expire) or exclusive",
    )


def _default_exchange_refused() -> Refused:
    return Refused(403, "ACCESS_REFUSED - operation not permitted on the default exchange")


def _reserved(kind: str, name: str) -> Refused:
    return Refused(403, f"ACCESS_REFUSED - {kind} name '{name}' contains reserved prefix 'amq.*'")


def generated_name(prefix: str) -> str:
    """A server-generated name: ``amq.gen-…``, ``amq.ctag-…``."""
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
class Envelope:
    """One message in one queue; ``seq`` is its position for requeueing."""

    seq: int
    body: bytes
    properties: Properties
    exchange: str
    routing_key: str
    redelivered: bool = False


@dataclass(eq=False, slots=True)
class Binding:
    kind: str  # "queue" or "exchange"
    destination: str
    routing_key: str
    arguments: dict[str, object]


@dataclass(eq=False, slots=True)
class Exchange:
    name: str
    type: str
    durable: bool
    auto_delete: bool
    internal: bool
    arguments: dict[str, object]
    bindings: dict[tuple[str, str, str, str], Binding] = field(default_factory=dict)

    def matches(self, binding: Binding, routing_key: str) -> bool:
        if self.type == "fanout":
            return True
        if self.type == "topic":
            return _topic_matches(binding.routing_key, routing_key)
        return binding.routing_key == routing_key


class MessageQueue:
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
        owner: object | None,
        auto_delete: bool,
        arguments: dict[str, object],
    ) -> None:
        self.name = name
        self.durable = durable
        self.owner = owner
        self.auto_delete = auto_delete
        self.arguments = arguments
        self.ready: deque[Envelope] = deque()
        self.consumers: list[Subscriber] = []
        self.exclusive_consumer: Subscriber | None = None
        self.deleted = False
        self._seq = 0

    def put(self, body: bytes, properties: Properties, exchange: str, routing_key: str) -> None:
        self._seq += 1
        self.ready.append(Envelope(self._seq, body, properties, exchange, routing_key))

    def requeue(self, envelopes: list[Envelope]) -> None:
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


class Broker:
    """The state of one named broker: exchanges, queues and bindings."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.exchanges: dict[str, Exchange] = {
            f"amq.{kind}": Exchange(f"amq.{kind}", kind, True, False, False, {})
            for kind in ("direct", "fanout", "topic")
        }
        self.queues: dict[str, MessageQueue] = {}
        self.connections: set[object] = set()
        self.max_message_size = MAX_MESSAGE_SIZE
        self.loop: object | None = None

    def __repr__(self) -> str:
        return f"<memory broker {self.name!r}>"

    # ------------------------------------------------------------ connections

    def attach(self, connection: object, loop: object | None) -> None:
        """Count ``connection`` in; ``loop`` identifies its event loop (None: unknown)."""
        if self.connections and loop is not None and self.loop is not None and loop != self.loop:
            raise RuntimeError(
                f"memory broker {self.name!r} is in use by connections of another event loop "
                "(one event loop per broker: use another name, e.g. memory://other)"
            )
        if not self.connections:
            self.loop = loop
        self.connections.add(connection)

    def detach(self, connection: object) -> None:
        for queue in [q for q in self.queues.values() if q.owner is connection]:
            self.delete_queue(queue)
        self.connections.discard(connection)
        if not self.connections:
            self.loop = None

    # ------------------------------------------------------------ exchanges

    def exchange(self, name: str) -> Exchange:
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
            raise Refused(
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
            self.exchanges[name] = Exchange(
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
            raise Refused(403, f"ACCESS_REFUSED - deletion of system exchange '{name}' not allowed")
        exchange = self.exchanges.get(name)
        if exchange is None:
            return
        if if_unused and exchange.bindings:
            raise Refused(406, f"PRECONDITION_FAILED - exchange '{name}' in vhost '{VHOST}' in use")
        self._delete_exchange(exchange)

    def _delete_exchange(self, exchange: Exchange) -> None:
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

    def _unbound(self, exchange: Exchange) -> None:
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
                key, Binding(kind, destination, routing_key, dict(arguments))
            )
        elif exchange.bindings.pop(key, None) is not None:
            self._unbound(exchange)

    # ------------------------------------------------------------ queues

    def queue(self, connection: object, name: str) -> MessageQueue:
        """The queue ``name``, if this connection may use it (404, 405)."""
        queue = self.queues.get(name)
        if queue is None:
            raise _not_found("queue", name)
        if queue.owner is not None and queue.owner is not connection:
            raise _locked(name)
        return queue

    def queue_declare(
        self,
        connection: object,
        name: str,
        *,
        passive: bool,
        durable: bool,
        exclusive: bool,
        auto_delete: bool,
        arguments: FieldTable,
    ) -> MessageQueue:
        if passive:
            return self.queue(connection, name)
        if not name:
            name = generated_name("amq.gen")
        elif name.startswith("amq."):
            raise _reserved("queue", name)
        owner = connection if exclusive else None
        existing = self.queues.get(name)
        if existing is None:
            if not durable and not exclusive:
                raise _transient_nonexclusive_refused()
            queue = MessageQueue(
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
        self, connection: object, name: str, *, if_unused: bool, if_empty: bool
    ) -> int:
        if name not in self.queues:
            return 0
        queue = self.queue(connection, name)
        if if_unused and queue.consumers:
            raise Refused(406, f"PRECONDITION_FAILED - queue '{name}' in vhost '{VHOST}' in use")
        if if_empty and queue.ready:
            raise Refused(
                406, f"PRECONDITION_FAILED - queue '{name}' in vhost '{VHOST}' is not empty"
            )
        count = len(queue.ready)
        self.delete_queue(queue)
        return count

    def delete_queue(self, queue: MessageQueue) -> None:
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

    def consumer_gone(self, queue: MessageQueue) -> None:
        """A consumer of ``queue`` went away: auto-delete it, or give others its messages."""
        if queue.deleted:
            return
        if queue.auto_delete and not queue.consumers:
            self.delete_queue(queue)
        else:
            queue.dispatch()

    # ------------------------------------------------------------ publishing

    def route(self, exchange: str, routing_key: str) -> list[MessageQueue]:
        if not exchange:
            queue = self.queues.get(routing_key)
            return [queue] if queue is not None else []
        source = self.exchange(exchange)
        if source.internal:
            raise Refused(
                403,
                f"ACCESS_REFUSED - cannot publish to internal exchange '{exchange}' in vhost "
                f"'{VHOST}'",
            )
        found: dict[str, MessageQueue] = {}
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
        if len(body) > self.max_message_size:
            raise Refused(
                406,
                f"PRECONDITION_FAILED - message size {len(body)} is larger than configured "
                f"max size {self.max_message_size}",
            )
        queues = self.route(exchange, routing_key)
        for queue in queues:
            queue.put(body, properties, exchange, routing_key)
        for queue in queues:
            queue.dispatch()
        return bool(queues)


def _locked(name: str) -> Refused:
    return Refused(
        405,
        f"RESOURCE_LOCKED - cannot obtain exclusive access to locked queue '{name}' in vhost "
        f"'{VHOST}'. It could be originally declared on another connection or the exclusive "
        "property value does not match that of the original declaration.",
    )

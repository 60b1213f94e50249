"""An in-process message broker: ``kiwi_anyio.connect("memory://")``.

For tests, demos and single-process applications: no RabbitMQ, no sockets, no threads. It
implements the channel interface of :mod:`kiwi_anyio.channel`, as :mod:`kiwi_anyio.protocol`
does for RabbitMQ (:func:`connect` gives a :class:`MemoryConnection`), with RabbitMQ's
observable semantics::

    async with kiwi_anyio.memory.connect("demo") as conn, conn.channel() as ch:
        await ch.queue_declare("hello", exclusive=True)
        await ch.basic_publish(b"hi", routing_key="hello")
        message = await ch.basic_get("hello")  # delivered at once: no waiting in memory://
        assert message is not None and message.body == b"hi"
        message.ack()

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
* a message body over 16 MiB (RabbitMQ 4's default ``max_message_size``) is refused with 406
  PRECONDITION_FAILED ("message size N is larger than configured max size M");
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
  consumer tag, 530; ``prefetch_size``, 540; a transient non-exclusive queue on RabbitMQ 4.3,
  541) close only the channel here.
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

The package: ``_model`` is the broker itself (exchanges, queues, routing, dispatch; no anyio),
``_client`` the connections, channels, consumers and messages on :mod:`kiwi_anyio.channel`'s
interface over it. This module owns the registry of named brokers (:func:`connect`,
:func:`reset`) and must not touch a broker's state or a channel's.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import anyio
import anyio.lowlevel

from ._client import MemoryChannel as MemoryChannel
from ._client import MemoryConnection as MemoryConnection
from ._client import MemoryConsumer as MemoryConsumer
from ._client import MemoryMessage as MemoryMessage
from ._model import MAX_MESSAGE_SIZE as MAX_MESSAGE_SIZE
from ._model import Broker
from ._model import _topic_matches as _topic_matches

__all__ = [
    "MAX_MESSAGE_SIZE",
    "MemoryChannel",
    "MemoryConnection",
    "MemoryConsumer",
    "MemoryMessage",
    "connect",
    "reset",
    "reset_all",
]

logger = logging.getLogger(__name__)


def _current_loop() -> object | None:
    """An identity of the running event loop (None if this anyio cannot tell)."""
    current_token: Callable[[], object] | None = getattr(anyio.lowlevel, "current_token", None)
    return current_token() if current_token is not None else None


_brokers: dict[str, Broker] = {}
_brokers_lock = threading.Lock()
_announced = False


def _broker_name(name: str) -> str:
    if name.startswith("memory://"):
        name = name[len("memory://") :]
    return name.strip("/") or "default"


def _get_broker(name: str) -> Broker:
    global _announced
    with _brokers_lock:
        broker = _brokers.get(name)
        if broker is None:
            broker = _brokers[name] = Broker(name)
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
    broker.attach(connection, _current_loop())
    try:
        yield connection
    finally:
        connection._close()

"""Poison tasks and retries: bounded redelivery, dead letters, retry with backoff.

A task whose handling kills its worker is redelivered to the next one, for ever, unless
somebody counts. :class:`Redelivery` counts deliveries and decides, for each delivered task,
whether to handle it, republish it (to count it), or set it aside:

- **Quorum queues** count for us: the broker's ``x-delivery-count`` header.
- **Classic queues** count nothing but the ``redelivered`` flag, so a redelivered task is
  republished with our attempt header (``x-kiwi-deliveries``), confirmed, before the
  original is acknowledged (nothing is lost; a crash in between makes a duplicate, which
  at-least-once allows). The copy goes to the back of the queue.
- Past ``max_deliveries``, the task goes to ``<queue>.dead-letters`` (durable, declared here),
  with headers saying why, how often and by whom; its sender gets
  :class:`~kiwi_anyio.TaskDeadLettered`.
- :class:`~kiwi_anyio.Retry` from a subscriber puts the task back after a delay. On RabbitMQ
  this uses a delay queue per delay (``<queue>.retry-<ms>ms``: a queue TTL that dead-letters
  back to the task queue). On ``memory://``, which has no TTLs, it waits in this process. The
  attempt counts toward ``max_deliveries``.

Since RabbitMQ 4.0 the broker no longer interprets ``x-death`` on republished messages, so
the attempt header is ours. No task queue's declare arguments change, so kiwiPy's queues are
reused as they are.

It owns the counting and the side queues. It must not call subscribers (that is
:mod:`.tasks`) or know the communicator.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import os
import socket
from typing import Any, Final

import anyio

from .. import _wire as wire
from .._logctx import LogContext
from ..channel import Message, Properties
from ..exceptions import DeliveryFailed, MessageReturned, TaskDeadLettered
from ..robust.link import Link, broker_version
from ..robust.publisher import Publisher
from ..robust.settling import SETTLE_TIMEOUT
from .serving import REPLY_EXCHANGE, Serving

__all__ = [
    "ATTEMPTS_HEADER",
    "DEFAULT_MAX_DELIVERIES",
    "DeadLetter",
    "DeadLetters",
    "Redelivery",
    "Verdict",
    "dead_letter_queue",
]

logger = logging.getLogger("kiwi_anyio.communicator")

#: A task delivered this often without an answer is dead-lettered (``None``: never).
DEFAULT_MAX_DELIVERIES: Final = 10
#: Our count of a task's earlier deliveries, carried by the copies we republish.
ATTEMPTS_HEADER: Final = "x-kiwi-deliveries"
#: Why a task was dead-lettered, on its copy in the dead-letter queue.
REASON_HEADER: Final = "x-kiwi-dead-letter-reason"
#: The queue a dead-lettered task came from, and who set it aside.
QUEUE_HEADER: Final = "x-kiwi-dead-letter-queue"
WORKER_HEADER: Final = "x-kiwi-dead-letter-worker"
#: Why the last retry was asked for.
RETRY_HEADER: Final = "x-kiwi-retry-reason"
#: How long a delay queue lives after its last use (ms, on top of its delay).
_DELAY_QUEUE_EXPIRES: Final = 60_000

# headers the broker sets on a delivery: a copy must not carry them (they would miscount)
_BROKER_HEADERS: Final = (
    "x-delivery-count",
    "x-acquired-count",
    "x-death",
    "x-first-death",
    "x-last-death",
)

_PROPERTY_FIELDS: Final = (
    "content_type",
    "content_encoding",
    "delivery_mode",
    "priority",
    "correlation_id",
    "reply_to",
    "message_id",
    "timestamp",
    "message_type",
    "user_id",
    "app_id",
)


def dead_letter_queue(queue: str) -> str:
    """The dead-letter queue of task queue ``queue``."""
    return f"{queue}.dead-letters"


class Verdict(enum.Enum):
    """What to do with a delivered task."""

    HANDLE = "handle"
    REPUBLISH = "republish"  # a classic queue's redelivery: count it
    DEAD_LETTER = "dead-letter"


def _headers(message: Message) -> dict[str, Any]:
    return dict(message.properties.headers or {})


def _int(value: Any) -> int:
    try:
        return max(0, int(value))
    except (TypeError, ValueError):
        return 0


def copy_properties(message: Message, **headers: Any) -> Properties:
    """The message's properties with ``headers`` set (``None`` removes one)."""
    props = message.properties
    fields: dict[str, Any] = {name: getattr(props, name, None) for name in _PROPERTY_FIELDS}
    table = {k: v for k, v in _headers(message).items() if not k.startswith(_BROKER_HEADERS)}
    for key, value in headers.items():
        name = key.replace("_", "-")
        if value is None:
            table.pop(name, None)
        else:
            table[name] = value
    fields["delivery_mode"] = fields["delivery_mode"] or 2
    fields["headers"] = table or None
    properties: Properties = Properties(**fields)
    return properties


class Redelivery:
    """Counting a task queue's deliveries; see the module docstring."""

    def __init__(
        self,
        link: Link,
        publisher: Publisher,
        serving: Serving,
        *,
        queue: str,
        exchange: str,
        max_deliveries: int | None,
        log: LogContext,
    ) -> None:
        if max_deliveries is not None and max_deliveries < 1:
            raise ValueError(f"max_deliveries must be None or >= 1, not {max_deliveries!r}")
        self._link = link
        self._publisher = publisher
        self._serving = serving
        self.queue = queue
        self.exchange = exchange
        self.max_deliveries = max_deliveries
        self._log = log  # the task queue's consumer, in the logs
        self.dead_letters = dead_letter_queue(queue)
        self._declared: set[str] = set()  # side queues declared on this connection
        link.on_new_connection(self._declared.clear)

    # ------------------------------------------------------------ counting

    def verdict(self, message: Message) -> tuple[Verdict, int]:
        """What to do with ``message``, and the delivery count that goes with it: the
        number of this delivery (HANDLE), the deliveries so far (REPUBLISH, DEAD_LETTER)."""
        headers = _headers(message)
        earlier = _int(headers.get(ATTEMPTS_HEADER))
        limit = self.max_deliveries
        if "x-delivery-count" in headers:  # a quorum queue counts for us
            attempt = earlier + _int(headers["x-delivery-count"]) + 1
            if limit is not None and attempt > limit:
                return Verdict.DEAD_LETTER, attempt - 1
            return Verdict.HANDLE, attempt
        if message.redelivered:
            # a classic queue: this copy was delivered before and not answered (its worker
            # died, or its channel closed)
            failed = earlier + 1
            if limit is not None and failed >= limit:
                return Verdict.DEAD_LETTER, failed
            return Verdict.REPUBLISH, failed
        attempt = earlier + 1
        if limit is not None and attempt > limit:
            return Verdict.DEAD_LETTER, earlier
        return Verdict.HANDLE, attempt

    # ------------------------------------------------------------ the three outcomes

    async def republish(self, message: Message, deliveries: int) -> None:
        """Queue a copy carrying ``deliveries`` (confirmed), then ack the original.

        Cancellation: the original is not acked (the broker redelivers it).
        """
        await self._move(
            self.queue, message, copy_properties(message, x_kiwi_deliveries=deliveries)
        )

    async def requeue(self, message: Message, earlier: int) -> None:
        """Give the task back without counting this delivery (every subscriber rejected
        it): a copy carrying ``earlier`` deliveries, confirmed, then ack the original.

        Cancellation: the original is not acked (the broker redelivers it).
        """
        await self._move(
            self.queue, message, copy_properties(message, x_kiwi_deliveries=earlier or None)
        )

    async def dead_letter(self, message: Message, deliveries: int, reason: str) -> None:
        """Move the task to the dead-letter queue (confirmed), tell its sender, then ack.

        Cancellation: the original is not acked (the broker redelivers it; the copy may
        already be in the dead-letter queue).
        """
        text = (
            f"task {message.properties.message_id or message.delivery_tag} of queue "
            f"{self.queue!r} was dead-lettered after {deliveries} deliveries ({reason}); "
            f"it is in queue {self.dead_letters!r}"
        )
        logger.error("%s: %s", self._link, text, extra=self._log.extra(message))
        await self._declare_dead_letters()
        properties = copy_properties(
            message,
            x_kiwi_deliveries=deliveries,
            x_kiwi_dead_letter_reason=reason,
            x_kiwi_dead_letter_queue=self.queue,
            x_kiwi_dead_letter_worker=f"{socket.gethostname()}:{os.getpid()}",
        )
        # acked before the sender is told: a stop in between must not requeue a task that
        # is in the dead-letter queue already (the sender then learns it from its timeout)
        await self._move(self.dead_letters, message, properties)
        if message.properties.reply_to and message.properties.correlation_id:
            try:
                task_no_reply = wire.decode_task(await self._serving.decode(message))[1]
            except Exception:
                task_no_reply = False
            if not task_no_reply:
                reply = wire.exception_reply(TaskDeadLettered(text), with_host=True)
                await self._serving.send_reply(message, reply, self.exchange, log=self._log)

    async def retry(self, message: Message, attempt: int, delay: float, reason: str) -> None:
        """Deliver the task again after ``delay`` seconds (counting ``attempt``), then ack
        the original; past ``max_deliveries``, dead-letter it instead.

        Cancellation: the original is not acked (the broker redelivers it).
        """
        limit = self.max_deliveries
        if limit is not None and attempt >= limit:
            await self.dead_letter(message, attempt, f"retried {attempt} times: {reason}")
            return
        properties = copy_properties(message, x_kiwi_deliveries=attempt, x_kiwi_retry_reason=reason)
        ms = max(0, round(delay * 1000))
        if ms == 0:
            await self._move(self.queue, message, properties)
        elif self._broker_has_ttls():
            delay_queue = f"{self.queue}.retry-{ms}ms"
            await self._declare_delay_queue(delay_queue, ms)
            await self._move(delay_queue, message, properties)
        else:  # memory:// has no TTLs: wait here, holding the delivery
            await anyio.sleep(delay)
            await self._move(self.queue, message, properties)

    # ------------------------------------------------------------ side queues

    def _broker_has_ttls(self) -> bool:
        connection = self._link.connection
        return connection is not None and (
            broker_version(connection.server_properties)[0] == "RabbitMQ"
        )

    async def _move(self, queue: str, message: Message, properties: Properties) -> None:
        """Publish a copy to ``queue`` (confirmed), then ack the original; shielded (within
        ``SETTLE_TIMEOUT``) so that a consumer stopping in between leaves no duplicate."""
        with anyio.CancelScope(shield=True, deadline=anyio.current_time() + SETTLE_TIMEOUT):
            await self._publish_to(queue, message, properties)
            if message.channel.is_open:
                message.ack()

    async def _publish_to(self, queue: str, message: Message, properties: Properties) -> None:
        what = f"task copy to queue {queue!r}"
        for attempt in range(2):
            try:
                await self._publisher.publish(
                    bytes(message.body),
                    exchange=REPLY_EXCHANGE,  # the default exchange: straight to the queue
                    routing_key=queue,
                    properties=properties,
                    mandatory=True,
                    what=what,
                )
                return
            except MessageReturned:
                if attempt:
                    raise DeliveryFailed(f"cannot send {what}: the queue is gone") from None
                # deleted meanwhile: declare it again (the task queue is its consumer's)
                self._declared.discard(queue)
                if queue == self.dead_letters:
                    await self._declare_dead_letters()

    async def _declare_dead_letters(self) -> None:
        queue = self.dead_letters
        if queue in self._declared:
            return
        await self._link.declare(
            lambda ch: ch.queue_declare(queue, durable=True), f"dead-letter queue {queue!r}"
        )
        self._declared.add(queue)

    async def _declare_delay_queue(self, queue: str, ms: int) -> None:
        if queue in self._declared:
            return
        arguments = {
            "x-message-ttl": ms,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": self.queue,
            "x-expires": ms + _DELAY_QUEUE_EXPIRES,
        }
        await self._link.declare(
            lambda ch: ch.queue_declare(queue, durable=True, arguments=arguments),
            f"delay queue {queue!r}",
        )
        self._declared.add(queue)


@dataclasses.dataclass(frozen=True, slots=True)
class DeadLetter:
    """A task in a dead-letter queue (see :meth:`~kiwi_anyio.TaskQueue.dead_letters`).

    Attributes:
        task: the task, decoded (``None`` if it cannot be decoded; see ``error``).
        reason: why it was set aside.
        deliveries: how often it was delivered.
        worker: ``host:pid`` of the process that set it aside.
        message_id: the task's message id.
        headers: every header of the dead-lettered copy.
        error: why the task could not be decoded, if it could not.
    """

    task: Any
    reason: str
    deliveries: int
    worker: str
    message_id: str | None
    headers: dict[str, Any]
    error: str | None = None


class DeadLetters:
    """Listing, requeueing and purging a task queue's dead letters (on their own channel).

    It must not touch the task queue's consumer.
    """

    def __init__(self, link: Link, serving: Serving, redelivery: Redelivery) -> None:
        self._link = link
        self._serving = serving
        self._redelivery = redelivery

    async def list(self, limit: int | None = None) -> list[DeadLetter]:
        """The dead letters, oldest first, left in the queue.

        Cancellation: the messages taken for a look are given back by the broker.
        """
        out: list[DeadLetter] = []
        await self._redelivery._declare_dead_letters()
        connection = await self._link.wait_connection()
        async with connection.channel() as channel:
            taken: list[Message] = []
            try:
                while limit is None or len(taken) < limit:
                    message = await channel.basic_get(self._redelivery.dead_letters)
                    if message is None:
                        break
                    taken.append(message)
                    out.append(await self._describe(message))
            finally:
                for message in taken:
                    if not message.settled and channel.is_open:
                        message.nack(requeue=True)
        return out

    async def requeue(self) -> int:
        """Move every dead letter back to its task queue, its count reset; returns how many.

        Cancellation: the ones moved so far stay moved.
        """
        redelivery = self._redelivery
        await redelivery._declare_dead_letters()
        connection = await self._link.wait_connection()
        moved = 0
        async with connection.channel() as channel:
            while (message := await channel.basic_get(redelivery.dead_letters)) is not None:
                properties = copy_properties(
                    message,
                    x_kiwi_deliveries=None,
                    x_kiwi_dead_letter_reason=None,
                    x_kiwi_dead_letter_queue=None,
                    x_kiwi_dead_letter_worker=None,
                    x_kiwi_retry_reason=None,
                )
                await redelivery._publish_to(redelivery.queue, message, properties)
                message.ack()
                moved += 1
        return moved

    async def purge(self) -> int:
        """Delete every dead letter; returns how many."""
        redelivery = self._redelivery
        await redelivery._declare_dead_letters()
        count: int = await self._link.declare(
            lambda ch: ch.queue_purge(redelivery.dead_letters), "dead-letter queue purge"
        )
        return count

    async def _describe(self, message: Message) -> DeadLetter:
        headers = _headers(message)
        task: Any = None
        error: str | None = None
        try:
            task = wire.decode_task(await self._serving.decode(message))[0]
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
        return DeadLetter(
            task=task,
            reason=str(headers.get(REASON_HEADER, "")),
            deliveries=_int(headers.get(ATTEMPTS_HEADER)),
            worker=str(headers.get(WORKER_HEADER, "")),
            message_id=message.properties.message_id,
            headers=headers,
            error=error,
        )

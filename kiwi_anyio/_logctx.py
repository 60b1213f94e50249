"""The context of a log record about one delivered message, as ``extra`` fields.

Every log record the patterns write about a delivered message (a task, an RPC call, a
broadcast, a reply) carries the fields of :data:`LOG_FIELDS` as attributes of its
:class:`logging.LogRecord`, so ``%(correlation_id)s`` in a format, or a JSON formatter that
copies a record's extra attributes, shows them. A consumer's :class:`LogContext` (its name,
as the delivery middlewares of :mod:`kiwi_anyio.hooks` see it, and its queue) builds them:
``logger.warning(..., extra=context.extra(message))``.

Owns: the field names and how they are read from a message. It is here, not in
:mod:`kiwi_anyio.telemetry` (which re-exports :func:`log_extra` and :data:`LOG_FIELDS`), so
that the patterns need not import the telemetry module. It must not log anything itself, nor
import anything of the library at run time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from .channel import Message

__all__ = ["LOG_FIELDS", "LogContext", "log_extra"]

#: the attributes :func:`log_extra` adds to a log record, in this order
LOG_FIELDS: Final = (
    "messaging_consumer",
    "queue",
    "identifier",
    "routing_key",
    "correlation_id",
    "message_id",
    "delivery_tag",
)


def log_extra(
    message: Message,
    what: str,
    *,
    queue: str | None = None,
    identifier: str | None = None,
    correlation_id: str | None = None,
) -> dict[str, Any]:
    """The ``extra`` of a log record about ``message``, delivered to the consumer ``what``
    (``"task queue 'q'"``, ``"RPC subscriber 'id'"``, ``"broadcasts"``, ``"reply queue"``)
    of ``queue``.

    The fields (:data:`LOG_FIELDS`; a value the message or the caller lacks is ``None``):
    ``messaging_consumer`` (``what``), ``queue``, ``identifier`` (the RPC identifier, or the
    identifier of the task or broadcast subscriber the record is about), ``routing_key``,
    ``correlation_id`` (the message's, else the one given: a broadcast carries its own in
    its body), ``message_id`` and ``delivery_tag``.
    """
    properties = message.properties
    return {
        "messaging_consumer": what,
        "queue": queue,
        "identifier": identifier,
        "routing_key": message.routing_key,
        "correlation_id": properties.correlation_id or correlation_id,
        "message_id": properties.message_id,
        "delivery_tag": message.delivery_tag,
    }


@dataclass(frozen=True, slots=True)
class LogContext:
    """What the log records about the messages of one consumer share: its name ``what`` (as
    the hooks see it), the ``queue`` it consumes and, for an RPC subscriber, its
    ``identifier``."""

    what: str
    queue: str | None = None
    identifier: str | None = None

    def extra(
        self,
        message: Message,
        *,
        identifier: str | None = None,
        correlation_id: str | None = None,
    ) -> dict[str, Any]:
        """:func:`log_extra` of ``message`` in this context (``identifier``: of the
        subscriber the record is about, if not the context's)."""
        return log_extra(
            message,
            self.what,
            queue=self.queue,
            identifier=identifier or self.identifier,
            correlation_id=correlation_id,
        )

"""The seam for cross-cutting behaviour: every outgoing publish and every incoming delivery.

Telemetry, retries and typed messages plug in here instead of into each pattern:

- a **publish hook** ``hook(outgoing)`` sees every message the communicator publishes (tasks,
  RPC calls, broadcasts, replies) just before it is sent, as an :class:`Outgoing` whose
  ``body`` and ``properties`` it may replace (to add a header, say). A hook that wants the
  outcome calls ``outgoing.when_published(callback)``: the publisher then calls
  ``callback(None)`` once the broker confirmed the message, or ``callback(error)`` when the
  publish failed (or was cancelled: the error is the cancellation);
- a **delivery middleware** ``middleware(handler, what) -> handler`` wraps the handler of every
  consumer (``what`` names it: ``"task queue 'q'"``, ``"RPC subscriber 'id'"``,
  ``"broadcasts"``, ``"reply queue"``); the new handler is called with each delivered
  :class:`~kiwi_anyio.protocol.Message` and must await the one it wraps (or settle the
  message itself). One added with ``queue=True`` is called as
  ``middleware(handler, what, queue)`` with the name of the queue consumed. A middleware may
  hand the handler a wrapper of the message (to see its ack, nack or reject); a wrapper with
  an ``on_subscriber_failed(exc)`` method learns of subscribers that raised (the patterns
  call :func:`subscriber_failed`, whose exception becomes an error reply, not an error of
  the handler). A wrapper with a ``subscriber_scope(identifier)`` method gives the scope of
  each subscriber's call on a message handed to several (a broadcast's): the patterns enter
  :func:`calling_subscriber`.

The names say what a publish or a consumer is: an RPC call's publish is named
``RPC_CALL + repr(identifier)`` (``"RPC to 'id'"``) and an RPC subscriber's consumer
``RPC_SERVE + repr(identifier)`` (``"RPC subscriber 'id'"``); :func:`is_rpc_call` and
:func:`is_rpc_serve` tell them (telemetry makes their spans CLIENT and SERVER).

Middlewares wrap consumers started after they are added: add them before subscribing. With
none, a delivery costs nothing extra (handlers are wrapped once, when a consumer starts);
publish hooks cost one check per publish when there are none.

This module owns the hook lists only; it must not import the communicator or the patterns.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, Final, cast

from .channel import Message, Properties

__all__ = [
    "RPC_CALL",
    "RPC_SERVE",
    "DeliveryHandler",
    "DeliveryMiddleware",
    "Hooks",
    "Outgoing",
    "PublishHook",
    "PublishedCallback",
    "QueueMiddleware",
    "calling_subscriber",
    "is_rpc_call",
    "is_rpc_serve",
    "subscriber_failed",
]

logger = logging.getLogger("kiwi_anyio.communicator")

DeliveryHandler = Callable[[Message], Coroutine[Any, Any, None]]
DeliveryMiddleware = Callable[[DeliveryHandler, str], DeliveryHandler]
QueueMiddleware = Callable[[DeliveryHandler, str, str], DeliveryHandler]
PublishedCallback = Callable[[BaseException | None], None]

#: how the ``what`` of an RPC call's publish begins (``"RPC to 'id'"``)
RPC_CALL: Final = "RPC to "
#: how the ``what`` of an RPC subscriber's consumer begins (``"RPC subscriber 'id'"``)
RPC_SERVE: Final = "RPC subscriber "


def is_rpc_call(what: str) -> bool:
    """Whether the publish named ``what`` is an RPC call (a request awaiting its reply)."""
    return what.startswith(RPC_CALL)


def is_rpc_serve(what: str) -> bool:
    """Whether the consumer named ``what`` serves RPC calls."""
    return what.startswith(RPC_SERVE)


@dataclass(slots=True)
class Outgoing:
    """A message about to be published. Hooks may replace ``body`` and ``properties``."""

    body: bytes
    exchange: str
    routing_key: str
    properties: Properties
    mandatory: bool
    #: what it is, for logs and span names: ``"task to queue 'q'"``, ``"RPC to 'id'"`` ...
    what: str
    #: the :meth:`when_published` callbacks (None: none)
    after: list[PublishedCallback] | None = None

    def when_published(self, callback: PublishedCallback) -> None:
        """Call ``callback(None)`` once the broker confirmed the message, or
        ``callback(error)`` when the publish failed or was cancelled."""
        if self.after is None:
            self.after = [callback]
        else:
            self.after.append(callback)

    def published(self, error: BaseException | None) -> None:
        """The publisher's report: run the :meth:`when_published` callbacks (an exception
        of one is logged, never raised into the publish)."""
        for callback in self.after or ():
            try:
                callback(error)
            except Exception:
                logger.exception("publish callback %r raised", callback)


PublishHook = Callable[[Outgoing], None]


class Hooks:
    """The publish hooks and delivery middlewares of one communicator."""

    def __init__(self) -> None:
        self.publish: list[PublishHook] = []
        self.delivery: list[DeliveryMiddleware] = []
        # parallel to delivery: the queue middlewares' entries take the queue name too
        self._with_queue: list[bool] = []

    def add_publish_hook(self, hook: PublishHook) -> None:
        """Call ``hook(outgoing)`` before every publish, in the order added."""
        self.publish.append(hook)

    def add_delivery_middleware(
        self, middleware: DeliveryMiddleware | QueueMiddleware, *, queue: bool = False
    ) -> None:
        """Wrap the handler of every consumer started from now on (the first added is
        the outermost): ``middleware(handler, what)``, or with ``queue=True``
        ``middleware(handler, what, queue)`` (a :data:`QueueMiddleware`)."""
        self.delivery.append(cast(DeliveryMiddleware, middleware))
        self._with_queue.append(queue)

    def before_publish(self, outgoing: Outgoing) -> None:
        """Run the publish hooks on ``outgoing``."""
        for hook in self.publish:
            hook(outgoing)

    def wrap(self, handler: DeliveryHandler, what: str, queue: str = "") -> DeliveryHandler:
        """``handler`` (of a consumer of ``queue``) wrapped in every delivery middleware."""
        for middleware, with_queue in zip(
            reversed(self.delivery), reversed(self._with_queue), strict=True
        ):
            if with_queue:
                handler = cast(QueueMiddleware, middleware)(handler, what, queue)
            else:
                handler = middleware(handler, what)
        return handler


def subscriber_failed(message: Message, exc: BaseException) -> None:
    """Report that the subscriber handling ``message`` raised ``exc`` (the patterns call it
    before they turn the exception into an error reply): a middleware's message wrapper
    with an ``on_subscriber_failed(exc)`` method is told; a plain message costs a lookup."""
    report = getattr(message, "on_subscriber_failed", None)
    if report is not None:
        report(exc)


def calling_subscriber(message: Message, identifier: str) -> AbstractContextManager[object]:
    """The scope of the call of the subscriber ``identifier`` on ``message`` (a broadcast
    goes to every subscriber of its communicator): ``with calling_subscriber(message, id):``
    around the call. A middleware's message wrapper with a ``subscriber_scope(identifier)``
    method gives the scope (telemetry: a span per subscriber, which an exception leaving
    it fails); a plain message, a scope that does nothing."""
    scope = getattr(message, "subscriber_scope", None)
    if scope is None:
        return nullcontext()
    return cast(AbstractContextManager[object], scope(identifier))

"""The seam for cross-cutting behaviour: every outgoing publish and every incoming delivery.

Telemetry, retries and typed messages plug in here instead of into each pattern:

- a **publish hook** ``hook(outgoing)`` sees every message the communicator publishes (tasks,
  RPC calls, broadcasts, replies) just before it is sent, as an :class:`Outgoing` whose
  ``body`` and ``properties`` it may replace (to add a header, say);
- a **delivery middleware** ``middleware(handler, what) -> handler`` wraps the handler of every
  consumer (``what`` names it: ``"task queue 'q'"``, ``"RPC subscriber 'id'"``,
  ``"broadcasts"``, ``"reply queue"``); the new handler is called with each delivered
  :class:`~kiwi_anyio.protocol.Message` and must await the one it wraps (or settle the
  message itself).

Middlewares wrap consumers started after they are added: add them before subscribing. With
none, a delivery costs nothing extra (handlers are wrapped once, when a consumer starts);
publish hooks cost one check per publish when there are none.

This module owns the hook lists only; it must not import the communicator or the patterns.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from .protocol import Message, Properties

__all__ = ["DeliveryHandler", "DeliveryMiddleware", "Hooks", "Outgoing", "PublishHook"]

DeliveryHandler = Callable[[Message], Coroutine[Any, Any, None]]
DeliveryMiddleware = Callable[[DeliveryHandler, str], DeliveryHandler]


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


PublishHook = Callable[[Outgoing], None]


class Hooks:
    """The publish hooks and delivery middlewares of one communicator."""

    def __init__(self) -> None:
        self.publish: list[PublishHook] = []
        self.delivery: list[DeliveryMiddleware] = []

    def add_publish_hook(self, hook: PublishHook) -> None:
        """Call ``hook(outgoing)`` before every publish, in the order added."""
        self.publish.append(hook)

    def add_delivery_middleware(self, middleware: DeliveryMiddleware) -> None:
        """Wrap the handler of every consumer started from now on (the first added is
        the outermost)."""
        self.delivery.append(middleware)

    def before_publish(self, outgoing: Outgoing) -> None:
        """Run the publish hooks on ``outgoing``."""
        for hook in self.publish:
            hook(outgoing)

    def wrap(self, handler: DeliveryHandler, what: str) -> DeliveryHandler:
        """``handler`` wrapped in every delivery middleware."""
        for middleware in reversed(self.delivery):
            handler = middleware(handler, what)
        return handler

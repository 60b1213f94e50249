"""Bounds on the replies and acks still in progress when a consumer stops or the link closes.

A request whose handling finished is answered and acknowledged even while its consumer is
being stopped or the communicator is closing, but only for ``SETTLE_TIMEOUT`` seconds: a
broker that blocks publishing must not hold a close up for ever. :class:`SettleBounds`
keeps the shielded settles in progress (by channel), the deadlines set on them, and the
replies handed to confirm callbacks (which ack from there) that a consumer's channel must
wait for before it closes.

It owns only this bookkeeping: it sends nothing, and knows no pattern.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

import anyio

from ..channel import Channel

__all__ = ["SETTLE_TIMEOUT", "SettleBounds"]

SETTLE_TIMEOUT: Final = 5.0  # seconds a finished request may take to be answered and acked


class SettleBounds:
    """See the module docstring."""

    def __init__(self) -> None:
        # replies being sent, then acks: scope -> the request's channel
        self._settling: dict[anyio.CancelScope, Channel] = {}
        # channels whose consumer is being stopped -> the deadline of their settles
        self._bounded: dict[Channel, float] = {}
        self._close_deadline = math.inf  # of every settle, once closing
        # requests whose reply a confirm callback will ack: their channel -> how many
        self._handed_off: dict[Channel, int] = {}
        self._changed: anyio.Event | None = None

    def is_bounded(self, channel: Channel) -> bool:
        """True once the consumer on ``channel`` is being stopped."""
        return channel in self._bounded

    def bound(self, channel: Channel | None = None) -> None:
        """Closing (or stopping the consumer on ``channel``): give every reply still being
        settled (on that channel) ``SETTLE_TIMEOUT`` seconds, and those settled later too."""
        deadline = anyio.current_time() + SETTLE_TIMEOUT
        if channel is not None:
            self._bounded[channel] = min(self._bounded.get(channel, math.inf), deadline)
        else:
            self._close_deadline = min(self._close_deadline, deadline)
        for scope, on in self._settling.items():
            if channel is None or on is channel:
                scope.deadline = min(scope.deadline, deadline)

    @contextmanager
    def settling(self, channel: Channel, *, bounded: bool) -> Iterator[anyio.CancelScope]:
        """A shielded scope for one settle on ``channel`` (deadline ``SETTLE_TIMEOUT`` if
        ``bounded`` or the channel's consumer is stopping; later bounds apply to it too)."""
        with anyio.CancelScope(shield=True) as scope:
            if bounded or channel in self._bounded:
                scope.deadline = anyio.current_time() + SETTLE_TIMEOUT
            self._settling[scope] = channel
            try:
                yield scope
            finally:
                del self._settling[scope]

    def hand_off(self, channel: Channel) -> None:
        """A reply on ``channel``'s request was handed to a confirm callback."""
        self._handed_off[channel] = self._handed_off.get(channel, 0) + 1

    def handed_back(self, channel: Channel) -> None:
        """That confirm callback has settled its request."""
        handed = self._handed_off
        count = handed[channel] - 1
        if count:
            handed[channel] = count
            return
        del handed[channel]
        if self._changed is not None:
            self._changed.set()

    async def wait_handed_off(self, channel: Channel) -> None:
        """Before a consumer's channel closes: wait (up to SETTLE_TIMEOUT, and no longer than
        the settles bounded by stopping or closing) until the replies handed to confirm
        callbacks have acked their requests.

        Cancellation: returns early; the requests not acked are requeued by the broker.
        """
        deadline = min(
            anyio.current_time() + SETTLE_TIMEOUT,
            self._bounded.get(channel, math.inf),
            self._close_deadline,
        )
        with anyio.CancelScope(deadline=deadline):
            while channel in self._handed_off:
                changed = self._changed
                if changed is None or changed.is_set():
                    changed = self._changed = anyio.Event()
                await changed.wait()

    def forget(self, channel: Channel) -> None:
        """``channel`` is closed: drop its bound."""
        self._bounded.pop(channel, None)

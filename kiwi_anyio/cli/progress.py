"""The counts of the long-running commands (``task work``, ``listen``) and their reports.

This module owns :class:`Counts` (handled, failed, the rate), the periodic report (a running
line rewritten in place on a terminal, plain ``so far:`` lines elsewhere) and the delivery
middleware that counts failures (:func:`count_failures`, through the seam of
:mod:`kiwi_anyio.hooks`). It must not connect, parse arguments or write data lines; it writes
through :class:`~kiwi_anyio.cli.output.Output`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, cast

import anyio

from ..channel import Message
from ..hooks import DeliveryHandler, DeliveryMiddleware, subscriber_failed
from .output import Output

#: how often the running line is rewritten on a terminal when --report-every is not given
RUNNING_EVERY = 2.0


@dataclass
class Counts:
    """What a long-running command has handled and failed to handle (reported periodically
    and at exit). The rate counts both: the messages dealt with per second."""

    what: str = ""
    handled: int = 0
    failed: int = 0
    started: float = field(default_factory=time.monotonic)
    running: bool = False  # set once subscribed: only then is there something to report
    #: the time and the number dealt with at the last report (for the rate since then)
    _mark: tuple[float, int] = (0.0, 0)

    def start(self) -> None:
        """Subscribed: the clock starts, and the counts are reported from now on."""
        self.started = time.monotonic()
        self._mark = (self.started, 0)
        self.running = True

    def line(self) -> str:
        """E.g. ``"12 tasks in 30 s"``."""
        elapsed = time.monotonic() - self.started
        noun = self.what if self.handled == 1 else self.what + "s"
        return f"{self.handled} {noun} in {elapsed:.0f} s"

    def summary(self) -> str:
        """The summary at exit, with the overall rate: ``"12 tasks in 30 s (1 failed,
        0.4/s)"``."""
        elapsed = time.monotonic() - self.started
        rate = (self.handled + self.failed) / elapsed if elapsed > 0 else 0.0
        return f"{self.line()} ({self.failed} failed, {rate:.1f}/s)"

    def rate_since_last(self) -> float:
        """Messages dealt with per second since the last call (or :meth:`start`)."""
        now, dealt = time.monotonic(), self.handled + self.failed
        then, before = self._mark
        self._mark = (now, dealt)
        return (dealt - before) / (now - then) if now > then else 0.0

    def fail(self) -> None:
        """Count one message the command could not handle."""
        self.failed += 1


def report_interval(given: float | None, terminal: bool) -> float:
    """How often to report: ``--report-every`` if given (0: only at exit), else every
    :data:`RUNNING_EVERY` seconds on a terminal and never elsewhere."""
    if given is not None:
        return given
    return RUNNING_EVERY if terminal else 0.0


async def report_every(counts: Counts, show: Output, every: float) -> None:
    """Report ``counts`` every ``every`` seconds (never if 0) until cancelled: on a terminal
    as the running line (``12,345 handled · 3 failed · 410.2/s (last 2 s) · 30 s``), else as a
    ``so far:`` line.

    Cancellation: returns at once; the running line stays until ``show.end_running()``."""
    if every <= 0:
        return
    while True:
        await anyio.sleep(every)
        rate = counts.rate_since_last()
        if show.terminal:
            elapsed = duration(time.monotonic() - counts.started)
            show.running(
                f"{counts.handled:,} handled · {counts.failed:,} failed · {rate:,.1f}/s "
                f"(last {every:g} s) · {elapsed}"
            )
        else:
            show.status(
                f"so far: {counts.line()} ({counts.failed} failed, {rate:.1f}/s over the "
                f"last {every:g} s)"
            )


def duration(seconds: float) -> str:
    """``"42 s"``, ``"5 min 3 s"``, ``"2 h 5 min"``."""
    whole = int(seconds)
    if whole < 60:
        return f"{whole} s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def count_failures(counts: Counts, consumer: str) -> DeliveryMiddleware:
    """A delivery middleware (``comm.hooks.add_delivery_middleware``) that counts in
    ``counts.failed`` the messages of ``consumer`` (its ``what``: ``"task queue 'q'"``,
    ``"broadcasts"``) that could not be handled: a subscriber raised (the patterns report it
    with :func:`kiwi_anyio.hooks.subscriber_failed`), or the message was rejected without a
    requeue (an undecodable body). Each message counts once. Add it before subscribing."""

    def middleware(handler: DeliveryHandler, what: str) -> DeliveryHandler:
        if what != consumer:
            return handler

        async def counting(message: Message) -> None:
            await handler(cast(Message, _Counted(message, counts)))

        return counting

    return middleware


class _Counted:
    """A delivered message as the handler sees it: its failure is counted, once; everything
    else is the message's own."""

    __slots__ = ("_counted", "_counts", "_inner")

    def __init__(self, inner: Message, counts: Counts) -> None:
        self._inner = inner
        self._counts = counts
        self._counted = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def _failed(self) -> None:
        if not self._counted:
            self._counted = True
            self._counts.fail()

    def on_subscriber_failed(self, exc: BaseException) -> None:
        """The subscriber raised ``exc``: counted (and passed on to a wrapper inside)."""
        self._failed()
        subscriber_failed(self._inner, exc)

    def reject(self, *, requeue: bool = True) -> None:
        """Reject the message; without a requeue it is dropped: counted."""
        self._inner.reject(requeue=requeue)
        if not requeue:
            self._failed()

    def __repr__(self) -> str:
        return repr(self._inner)

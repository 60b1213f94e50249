"""The counts of the long-running commands (``task work``, ``listen``) and their reports.

This module owns :class:`Counts` and the periodic report. It must not connect, parse
arguments or write data lines (it writes through :class:`~kiwi_anyio.cli.output.Output`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import anyio

from .output import Output


@dataclass
class Counts:
    """What a long-running command has handled (printed periodically and at exit)."""

    what: str = ""
    handled: int = 0
    started: float = field(default_factory=time.monotonic)
    running: bool = False  # set once subscribed: only then is there something to report

    def line(self) -> str:
        elapsed = time.monotonic() - self.started
        noun = self.what if self.handled == 1 else self.what + "s"
        return f"{self.handled} {noun} in {elapsed:.0f} s"


async def report_every(counts: Counts, every: float) -> None:
    """Print ``counts`` every ``every`` seconds (never if 0) until cancelled."""
    if every <= 0:
        return
    while True:
        await anyio.sleep(every)
        Output.status(f"so far: {counts.line()}")

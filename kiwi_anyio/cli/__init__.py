"""The ``kiwi-anyio`` command line (also ``python -m kiwi_anyio``), by concern:

- :mod:`.entry`: :func:`main`, exceptions to exit codes;
- :mod:`.parser`: the argument parser and the ``--help`` text;
- :mod:`.commands`: the message commands (task send/work/dead-letters, rpc call, broadcast
  send, listen, ping, demo);
- :mod:`.worker`: ``kiwi-anyio worker APP``;
- :mod:`.progress`: the counts of ``task work`` and ``listen`` and their reports;
- :mod:`.output`: data and status lines, the exit codes, how typed messages are parsed.

The package uses the public API of :mod:`kiwi_anyio` (and :mod:`kiwi_anyio.worker`); nothing
in the library imports it.
"""

from __future__ import annotations

from .commands import demo
from .entry import main
from .output import (
    DEFAULT_URL,
    EXIT_CANNOT_CONNECT,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_TIMEOUT,
    EXIT_USAGE,
    PROG,
    Output,
    UsageError,
    parse_message,
)
from .parser import build_parser
from .progress import Counts

__all__ = [
    "DEFAULT_URL",
    "EXIT_CANNOT_CONNECT",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_TIMEOUT",
    "EXIT_USAGE",
    "PROG",
    "Counts",
    "Output",
    "UsageError",
    "build_parser",
    "demo",
    "main",
    "parse_message",
]

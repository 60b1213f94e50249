"""``main``: parse the arguments, run the command, turn what it raised into an exit code.

This module owns the mapping from exceptions to exit codes and the check that memory:// is
used only where it can work. It must not print data or define commands or options.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

import anyio

from .. import KiwiError, RemoteException, UnroutableError
from ..exceptions import ConnectionFailed, InvalidURL
from .output import (
    DEFAULT_URL,
    EXIT_CANNOT_CONNECT,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_TIMEOUT,
    EXIT_USAGE,
    Output,
    UsageError,
    fail,
    leaf,
)
from .parser import build_parser
from .progress import Counts
from .worker import run_worker

#: commands that work on memory:// (they talk to themselves, in one process)
MEMORY_OK = {"demo", "ping"}


def command_name(args: argparse.Namespace) -> str:
    """E.g. ``"task send"``."""
    words = [args.command]
    for dest in ("task_command", "rpc_command", "broadcast_command"):
        if getattr(args, dest, None):
            words.append(getattr(args, dest))
    return " ".join(words)


def main(argv: Sequence[str] | None = None, out: Any = None) -> int:
    """Entry point of ``kiwi-anyio`` / ``python -m kiwi_anyio``; returns the exit code.

    Ctrl-C stops a command with exit code 130 (``task work`` and ``listen`` print their
    counts first; a task in hand is given back to the broker)."""
    out = out or sys.stdout
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "worker":
        return run_worker(args)
    url = args.url or ("memory://demo" if args.command == "demo" else DEFAULT_URL)
    counts: Counts | None = getattr(args, "counts", None)
    if url.startswith("memory:") and args.command not in MEMORY_OK:
        return fail(
            EXIT_USAGE,
            f"{url} is a broker inside one process, so `{command_name(args)}` would only talk to "
            "itself: give an amqp:// URL (memory:// works with demo and ping)",
        )
    show = Output(out, getattr(args, "jsonl", False))
    try:
        try:
            return int(anyio.run(args.run, url, args, show, backend=args.backend))
        finally:
            show.end_running()  # before an error line or the summary
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # e.g. `kiwi-anyio listen | head`: the reader is gone
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so that the exit's flush does not fail
        return EXIT_FAILED
    except BaseException as raised:
        error = leaf(raised)
        if isinstance(error, UsageError | InvalidURL):
            return fail(EXIT_USAGE, str(error))
        if isinstance(error, ConnectionFailed):
            return fail(EXIT_CANNOT_CONNECT, str(error))
        if isinstance(error, TimeoutError):
            timeout = getattr(args, "timeout", None)
            if timeout is None:
                return fail(EXIT_TIMEOUT, str(error) or "timed out")
            return fail(EXIT_TIMEOUT, f"no result within {timeout} s (--timeout {timeout})")
        if isinstance(error, UnroutableError) and args.command == "rpc":
            return fail(EXIT_FAILED, f"no RPC subscriber {args.identifier!r}")
        if isinstance(error, RemoteException):
            return fail(EXIT_FAILED, f"remote exception: {error}")
        if isinstance(error, KiwiError):
            return fail(EXIT_FAILED, str(error))
        if error is not raised and isinstance(error, KeyboardInterrupt):
            return EXIT_INTERRUPTED
        raise
    finally:
        if counts is not None and counts.running:
            show.status(f"stopped after {counts.summary()}")

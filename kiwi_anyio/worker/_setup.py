"""What every worker process does around serving: load the app, log, exit, and the exit codes.

Owns: :func:`load_app`, the logging setup (text or JSON lines, tagged with the worker's index
under a supervisor), the one-line and logged forms of an error, the two ways of exiting at
once (:func:`exit_leaving_threads` after a drain, :func:`exit_now` at a second signal), how
signals are counted, and the exit codes the command line and the supervisor agree on. Must
not touch: serving (``_child.py``), children (``_supervisor.py``), health (``_health.py``).
"""

from __future__ import annotations

import contextlib
import datetime
import importlib
import json
import logging
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from ..app import App

logger = logging.getLogger("kiwi_anyio.worker")

EXIT_OK = 0  #: stopped cleanly (a signal, or the app stopped)
EXIT_FAILED = 1  #: the app failed: a startup hook raised, a handler crashed the process
EXIT_USAGE = 2  #: bad arguments, a bad URL, an app path that does not import
EXIT_CANNOT_CONNECT = 3  #: the broker cannot be reached, or refused the login
EXIT_FORCED = 130  #: stopped at once by a second signal


class AppLoadError(Exception):
    """``module:attribute`` does not name an :class:`~kiwi_anyio.App` (one-line message)."""


def load_app(spec: str) -> App:
    """The app named ``module:attribute`` (``module`` alone: its ``app``); the attribute
    may also be a function that returns an app. The current directory is importable, as
    with ``python -m``.

    Raises:
        AppLoadError: with a one-line message.
    """
    module_name, _, attribute = spec.partition(":")
    attribute = attribute or "app"
    names = [*module_name.split("."), *attribute.split(".")]
    if not all(part.isidentifier() for part in names):
        raise AppLoadError(f"{spec!r} is not an app path: write module:attribute, e.g. tasks:app")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module_name.startswith(exc.name):
            raise AppLoadError(f"cannot import {module_name!r}: no module named {exc.name!r}")
        raise AppLoadError(f"importing {module_name!r} failed: {_one_line(exc)}") from exc
    except Exception as exc:
        raise AppLoadError(f"importing {module_name!r} failed: {_one_line(exc)}") from exc
    target: Any = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise AppLoadError(f"module {module_name!r} has no attribute {attribute!r}") from None
    if not isinstance(target, App) and callable(target):
        try:
            target = target()
        except Exception as exc:
            raise AppLoadError(f"{spec} raised {_one_line(exc)}") from exc
    if not isinstance(target, App):
        raise AppLoadError(f"{spec} is {type(target).__name__}, not a kiwi_anyio.App")
    return target


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def format_exception_line(error: BaseException) -> str:
    """``Type: message`` on one line (for the worker's error messages)."""
    return _one_line(error)


def log_failure(error: BaseException, what: str) -> None:
    """Log ``error`` with its traceback (at ERROR) as ``what``."""
    logger.error(
        "%s: %s\n%s",
        what,
        _one_line(error),
        "".join(traceback.format_exception(error)).rstrip(),
    )


# --------------------------------------------------------------------------- logging


class JSONFormatter(logging.Formatter):
    """One JSON object per line: ``time``, ``level``, ``logger``, ``message``, ``pid``,
    ``worker`` (the index under a supervisor) and ``exception`` when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        worker = os.environ.get("KIWI_ANYIO_WORKER")
        if worker is not None:
            entry["worker"] = int(worker) if worker.isdigit() else worker
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=repr)


def configure_logging(level: str = "INFO", fmt: str = "text") -> None:
    """Log to stderr at ``level`` (``DEBUG``, ``INFO``, ``WARNING``, ``ERROR``) as ``text``
    or ``json`` lines; replaces the root logger's handlers."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JSONFormatter())
    else:
        worker = os.environ.get("KIWI_ANYIO_WORKER")
        tag = f"worker {worker} " if worker is not None else ""
        handler.setFormatter(
            logging.Formatter(
                f"%(asctime)s %(levelname)s [{tag}pid %(process)d] %(name)s: %(message)s"
            )
        )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())


def _flush_logs() -> None:
    for handler in logging.getLogger().handlers:
        with contextlib.suppress(Exception):
            handler.flush()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


def exit_leaving_threads(code: int) -> None:
    """Exit with ``code`` now if plain-function handlers still run in worker threads (they
    outlived the drain: their tasks were requeued, and threads cannot be cancelled), instead
    of letting the interpreter wait for them; return otherwise."""
    current = threading.current_thread()
    waiting = [t for t in threading.enumerate() if t is not current and not t.daemon]
    deadline = time.monotonic() + 0.5  # idle pool threads are on their way out
    for thread in waiting:
        thread.join(max(0.0, deadline - time.monotonic()))
    busy = [t for t in waiting if t.is_alive()]
    if not busy:
        return
    logger.warning(
        "%d handler thread(s) still running after the drain (their tasks were requeued): "
        "exiting without them",
        len(busy),
    )
    _flush_logs()
    os._exit(code)


def exit_now(why: str) -> None:
    """Exit with :data:`EXIT_FORCED` now (logged as ``why``), without a drain."""
    logger.warning("%s: stopping at once; the broker redelivers unfinished tasks", why)
    _flush_logs()
    os._exit(EXIT_FORCED)


async def count_signals(
    signals: Any, first: Callable[[str], None], again: Callable[[str], None]
) -> None:
    """Call ``first(name)`` for the first signal received from ``signals`` (a graceful stop),
    ``again(name)`` for every later one (a stop at once); returns when ``signals`` ends."""
    seen = 0
    async for signum in signals:
        seen += 1
        (first if seen == 1 else again)(signal.Signals(signum).name)

"""Where the command line writes, and what it returns: data, status lines, exit codes.

This module owns the exit codes, :class:`UsageError`, how a message typed on the command line
is parsed (:func:`parse_message`) and :class:`Output` (data to stdout, the rest to stderr). It
must not connect to a broker, build the parser or run a command.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from typing import Any

import yaml

PROG = "kiwi-anyio"
DEFAULT_URL = "amqp://guest:guest@127.0.0.1/"

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_CANNOT_CONNECT = 3
EXIT_TIMEOUT = 4
EXIT_INTERRUPTED = 130

#: back to the start of the line, and clear it (a terminal's carriage return and EL)
CLEAR_LINE = "\r\x1b[K"


class UsageError(Exception):
    """A command-line mistake found after parsing: exit code 2."""


def parse_message(text: str, how: str = "yaml") -> Any:
    """A message typed on the command line, parsed ``how``: ``"yaml"`` (a YAML value, else
    the text itself), ``"json"`` (:class:`UsageError` if invalid) or ``"raw"`` (the text)."""
    if how == "raw":
        return text
    if how == "json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise UsageError(f"{text!r} is not valid JSON ({exc}); use --raw for text") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


class Output:
    """Where a command writes: data to ``out`` (text or JSON lines), the rest to ``err``
    (default: stderr).

    When ``err`` is a terminal, :meth:`running` keeps one summary line there, rewritten in
    place; status and data lines written meanwhile clear it first and draw it again below
    them (data lines only when ``out`` is that same terminal), so that neither is garbled.
    Writes are serialised by a lock: subscribers may write from worker threads.
    """

    def __init__(self, out: Any, jsonl: bool, err: Any = None) -> None:
        self.out = out
        self.jsonl = jsonl
        self.err = sys.stderr if err is None else err
        #: True if ``err`` is a terminal: the running line is rewritten in place
        self.terminal = _isatty(self.err)
        self._shared = self.terminal and _same_file(out, self.err)
        self._running = ""  # the running line as drawn ("": none on the screen)
        self._lock = threading.Lock()

    def data(self, text: str, **fields: Any) -> None:
        """One result, task or broadcast: ``text`` or, with --jsonl, ``fields`` as JSON."""
        line = json.dumps(fields, default=repr) if self.jsonl else text
        with self._lock:
            redraw = self._shared and self._running
            if redraw:
                self._write(CLEAR_LINE)
            print(line, file=self.out, flush=True)
            if redraw:
                self._write(self._running)

    def status(self, text: str) -> None:
        """A line of progress or counts (``err``, so that ``out`` holds data only)."""
        with self._lock:
            if self._running:
                self._write(f"{CLEAR_LINE}{text}\n{self._running}")
            else:
                self._write(text + "\n")

    def running(self, text: str) -> None:
        """The running summary: on a terminal it replaces the one drawn before (cut to the
        terminal's width); elsewhere it is a :meth:`status` line."""
        if not self.terminal:
            self.status(text)
            return
        columns = _columns(self.err)
        if 1 < columns <= len(text):
            text = text[: columns - 1]
        with self._lock:
            self._running = text
            self._write(CLEAR_LINE + text)

    def end_running(self) -> None:
        """Clear the running summary (a final summary follows as a :meth:`status` line)."""
        with self._lock:
            if self._running:
                self._running = ""
                self._write(CLEAR_LINE)

    def _write(self, text: str) -> None:
        self.err.write(text)
        self.err.flush()


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or closed
        return False


def _same_file(one: Any, other: Any) -> bool:
    """True if the two streams write to the same file (a terminal, say)."""
    try:
        a, b = os.fstat(one.fileno()), os.fstat(other.fileno())
    except (AttributeError, ValueError, OSError):  # e.g. io.StringIO: no file
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _columns(stream: Any) -> int:
    """The width of the terminal ``stream`` writes to (0 if unknown)."""
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, ValueError, OSError):
        return 0


def leaf(error: BaseException) -> BaseException:
    """The one exception inside (nested) single-exception groups."""
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error


def fail(code: int, message: str) -> int:
    """Print ``message`` as the one error line on stderr; returns ``code``."""
    print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)
    return code

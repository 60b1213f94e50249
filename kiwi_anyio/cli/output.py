"""Where the command line writes, and what it returns: data, status lines, exit codes.

This module owns the exit codes, :class:`UsageError`, how a message typed on the command line
is parsed (:func:`parse_message`) and :class:`Output` (data to stdout, the rest to stderr). It
must not connect to a broker, build the parser or run a command.
"""

from __future__ import annotations

import json
import sys
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
    """Where a command writes: data to ``out`` (text or JSON lines), the rest to stderr."""

    def __init__(self, out: Any, jsonl: bool) -> None:
        self.out = out
        self.jsonl = jsonl

    def data(self, text: str, **fields: Any) -> None:
        """One result, task or broadcast: ``text`` or, with --jsonl, ``fields`` as JSON."""
        line = json.dumps(fields, default=repr) if self.jsonl else text
        print(line, file=self.out, flush=True)

    @staticmethod
    def status(text: str) -> None:
        """Progress and counts (stderr, so that stdout holds data only)."""
        print(text, file=sys.stderr, flush=True)


def leaf(error: BaseException) -> BaseException:
    """The one exception inside (nested) single-exception groups."""
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error


def fail(code: int, message: str) -> int:
    """Print ``message`` as the one error line on stderr; returns ``code``."""
    print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)
    return code

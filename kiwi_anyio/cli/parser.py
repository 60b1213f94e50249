"""The ``kiwi-anyio`` argument parser: every command, option and help text.

This module owns the parser and the text ``--help`` prints (:data:`HELP`, kept as written). It
must not connect, print or choose exit codes; each sub-command names the function that runs
it (``run``, from :mod:`kiwi_anyio.cli.commands`; ``None`` for ``worker``, which
:func:`kiwi_anyio.cli.main` runs outside ``anyio.run``).
"""

from __future__ import annotations

import argparse
import os
import platform
import textwrap
from typing import Any

from .. import __version__
from . import commands
from .output import PROG
from .progress import Counts

#: ``kiwi-anyio --help``: the summary, the description and (after "Exit codes:") the epilog
HELP = """kiwi-anyio: send, serve and watch kiwiPy-style tasks, RPC calls and broadcasts.

Run it as "kiwi-anyio" or "python -m kiwi_anyio". The broker URL comes from --url (given
before or after the command) or the KIWI_ANYIO_URL environment variable, else
amqp://guest:guest@127.0.0.1/ (demo: memory://demo, the broker embedded in this process).

Messages given on the command line (TASK, MESSAGE, BODY, --answer) are parsed as YAML by
default (--yaml), as kiwiPy's default codec would carry them: 30 is the int 30, yes is True,
01 is 1, [1, 2] is a list, and text that is not valid YAML stays a string. --json parses
them as JSON instead (invalid JSON is a usage error); --raw sends the text as typed.

Output: results, tasks and broadcasts go to stdout, one per line (--jsonl: one JSON object
per line); progress, counts and errors go to stderr, errors as one line starting with
"kiwi-anyio: error:". On a terminal, task work and listen keep a summary line there
(handled, failed, rate), rewritten in place.

Exit codes:
  0    success
  1    the request failed: a remote exception, no such subscriber, the connection lost
  2    usage: bad arguments, a bad URL, invalid --json input, memory:// where it cannot work
  3    cannot connect: broker unreachable, login or virtual host refused, TLS mismatch
  4    timeout: no result within --timeout
  130  interrupted (Ctrl-C); task work and listen print their counts first

worker: 0 stopped cleanly (a first SIGTERM/SIGINT drains), 1 the app failed (a startup hook
raised), 2 usage (bad URL, an app path that does not import), 3 cannot connect (broker
unreachable, login refused), 130 stopped at once by a second signal.
"""


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's paragraphs and the exit-code table as written."""


def _add_common(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """--url and --backend, accepted before and after the command.

    On the sub-commands they default to ``SUPPRESS`` so that a value given before the
    command is not overwritten by the sub-command's default."""
    default: Any = argparse.SUPPRESS
    group = parser.add_argument_group("connection")
    group.add_argument(
        "--url",
        default=os.environ.get("KIWI_ANYIO_URL") if top else default,
        help="broker URL, e.g. amqp://user:password@host:5672/vhost or amqps://... for TLS "
        "(default: $KIWI_ANYIO_URL, else amqp://guest:guest@127.0.0.1/; demo: memory://demo)",
    )
    group.add_argument(
        "--backend",
        choices=["asyncio", "trio"],
        default="asyncio" if top else default,
        help="the async library to run on (default: asyncio)",
    )


def _add_message_format(parser: argparse.ArgumentParser, what: str) -> None:
    group = parser.add_argument_group(f"how {what} is parsed")
    formats = group.add_mutually_exclusive_group()
    formats.add_argument(
        "--yaml",
        dest="parse",
        action="store_const",
        const="yaml",
        help="as a YAML value (the default): 30 is an int, yes is True, 01 is 1, [1, 2] a "
        "list; text that is not valid YAML stays a string",
    )
    formats.add_argument(
        "--json",
        dest="parse",
        action="store_const",
        const="json",
        help='as JSON: 30 is an int, "yes" (with the quotes) a string; invalid JSON exits 2',
    )
    formats.add_argument(
        "--raw",
        dest="parse",
        action="store_const",
        const="raw",
        help="as the string typed, unchanged",
    )
    parser.set_defaults(parse="yaml")


def _add_jsonl(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--jsonl",
        action="store_true",
        help="print each result, task or broadcast as one JSON object per line",
    )


def _add_report_every(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--report-every",
        type=float,
        default=None,
        metavar="SECONDS",
        help=f"report the {what} handled and failed and their rate to stderr this often (0: "
        "only at exit). Default: on a terminal, one line rewritten in place every 2 s; "
        "elsewhere (piped, a file) only at exit",
    )


def _add_timeout(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="give up (exit code 4) when no result came within SECONDS (default: wait for ever)",
    )


_SUBCOMMAND_HELP = "one of these (COMMAND --help tells its options):"


def build_parser() -> argparse.ArgumentParser:
    """The ``kiwi-anyio`` argument parser."""
    summary, _, details = HELP.partition("\n\n")
    description, _, epilog = details.partition("Exit codes:")
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=summary + "\n\n" + description.rstrip(),
        epilog="Exit codes:" + epilog,
        formatter_class=_Formatter,
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"{PROG} {__version__} (Python {platform.python_version()}, "
        f"anyio {_version_of('anyio')})",
        help="print the version and exit",
    )
    _add_common(parser, top=True)
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", help=_SUBCOMMAND_HELP
    )

    def command(parent: Any, name: str, help_: str, description: str | None = None) -> Any:
        child = parent.add_parser(
            name,
            help=help_,
            description=description or help_,
            epilog="Exit codes: 0 ok, 1 failed, 2 usage, 3 cannot connect, 4 timeout, "
            "130 Ctrl-C\n(see kiwi-anyio --help).",
            formatter_class=_Formatter,
        )
        _add_common(child, top=False)
        return child

    demo_ = command(
        sub,
        "demo",
        "show tasks, RPC and broadcasts working",
        "Start a task worker, an RPC server and a broadcast listener, send to each and print "
        "what happens. Runs on the embedded memory://demo broker unless --url is given.",
    )
    demo_.set_defaults(run=commands.run_demo)

    task = command(sub, "task", "send or work on tasks")
    task_sub = task.add_subparsers(
        dest="task_command", required=True, metavar="COMMAND", help=_SUBCOMMAND_HELP
    )
    send = command(
        task_sub,
        "send",
        "send a task and print its result",
        "Send TASK to a task queue and print its result (the worker's return value).",
    )
    send.add_argument("task", metavar="TASK", help="the task (parsed as YAML unless --json/--raw)")
    send.add_argument("--queue", help="the task queue (default: the communicator's default queue)")
    send.add_argument("--no-reply", action="store_true", help="do not wait for a result")
    _add_timeout(send)
    _add_message_format(send, "TASK")
    _add_jsonl(send)
    send.set_defaults(run=commands.task_send)

    work = command(
        task_sub,
        "work",
        "print each task (and answer it)",
        "Consume tasks from a queue, print each, answer it (with the task itself unless "
        "--answer). Runs until Ctrl-C; reports the tasks handled and failed as it runs (see "
        "--report-every) and at exit.",
    )
    work.add_argument("--queue", help="the task queue (default: the communicator's default queue)")
    work.add_argument(
        "--prefetch",
        type=int,
        default=1,
        help="how many tasks may be in hand at once (default: 1; needs --queue)",
    )
    work.add_argument(
        "--answer",
        metavar="VALUE",
        help="the result to give every task (default: the task itself)",
    )
    _add_report_every(work, "tasks")
    _add_message_format(work, "--answer")
    _add_jsonl(work)
    work.set_defaults(run=commands.task_work, counts=Counts("task"))

    dead = command(
        task_sub,
        "dead-letters",
        "list, requeue or purge a queue's dead letters",
        "List the tasks set aside as poison in a queue's dead-letter queue (QUEUE.dead-letters: "
        "delivered max_deliveries times without an answer), or move them back (--requeue, "
        "their delivery count reset), or delete them (--purge).",
    )
    dead.add_argument("--queue", help="the task queue (default: the communicator's default queue)")
    what = dead.add_mutually_exclusive_group()
    what.add_argument("--requeue", action="store_true", help="move them back to the task queue")
    what.add_argument("--purge", action="store_true", help="delete them")
    _add_jsonl(dead)
    dead.set_defaults(run=commands.task_dead_letters)

    rpc = command(sub, "rpc", "RPC calls")
    rpc_sub = rpc.add_subparsers(
        dest="rpc_command", required=True, metavar="COMMAND", help=_SUBCOMMAND_HELP
    )
    call = command(
        rpc_sub,
        "call",
        "call an RPC subscriber and print the reply",
        "Send MESSAGE to the RPC subscriber IDENTIFIER and print its reply (exit code 1 if it "
        "raised or no subscriber has that identifier).",
    )
    call.add_argument("identifier", metavar="IDENTIFIER", help="the RPC subscriber's identifier")
    call.add_argument(
        "message", metavar="MESSAGE", help="the message (parsed as YAML unless --json/--raw)"
    )
    _add_timeout(call)
    _add_message_format(call, "MESSAGE")
    _add_jsonl(call)
    call.set_defaults(run=commands.rpc_call)

    broadcast = command(sub, "broadcast", "broadcasts")
    broadcast_sub = broadcast.add_subparsers(
        dest="broadcast_command", required=True, metavar="COMMAND", help=_SUBCOMMAND_HELP
    )
    bsend = command(broadcast_sub, "send", "send a broadcast", "Send BODY to every listener.")
    bsend.add_argument("body", metavar="BODY", help="the body (parsed as YAML unless --json/--raw)")
    bsend.add_argument("--subject", help="the broadcast's subject, e.g. kern.critical")
    bsend.add_argument("--sender", help="the broadcast's sender, e.g. host1")
    _add_message_format(bsend, "BODY")
    bsend.set_defaults(run=commands.broadcast_send)

    listen = command(
        sub,
        "listen",
        "print broadcasts (filters with * wildcards)",
        "Print every broadcast whose subject and sender match (* matches any text, e.g. "
        "kern.*). Runs until Ctrl-C; reports the broadcasts handled and failed as it runs "
        "(see --report-every) and at exit.",
    )
    listen.add_argument("--subject", metavar="PATTERN", help="only subjects matching PATTERN")
    listen.add_argument("--sender", metavar="PATTERN", help="only senders matching PATTERN")
    _add_report_every(listen, "broadcasts")
    _add_jsonl(listen)
    listen.set_defaults(run=commands.listen, counts=Counts("broadcast"))

    ping = command(
        sub,
        "ping",
        "connect, show the broker, time an RPC",
        "Connect, print the broker's product and version and the time of one RPC round trip.",
    )
    _add_jsonl(ping)
    ping.set_defaults(run=commands.ping)

    _add_worker(sub, command)
    return parser


def _add_worker(sub: Any, command: Any) -> None:
    worker = command(
        sub,
        "worker",
        "serve a kiwi_anyio.App (tasks, RPC, broadcasts) in N processes",
        "Serve the app named APP (module:attribute, e.g. tasks:app) until SIGTERM or Ctrl-C. "
        "The first signal stops taking new messages, lets running handlers finish within "
        "--drain-timeout and requeues the rest (exit 0); a second one exits at once (the "
        "broker redelivers unfinished tasks; exit 130). With --workers N a supervisor runs N "
        "processes, each with its own connection, and restarts one that dies (with backoff). "
        "The URL is --url, else $KIWI_ANYIO_URL, else the app's.",
    )
    worker.description = textwrap.fill(worker.description, 88, break_on_hyphens=False)
    worker.epilog = (
        "Exit codes:\n"
        "  0    stopped cleanly (after a signal, or the app stopped)\n"
        "  1    the app failed: a startup hook raised\n"
        "  2    usage: bad URL, an app path that does not import, memory://\n"
        "  3    cannot connect: broker unreachable, login or virtual host refused\n"
        "  130  stopped at once by a second signal"
    )
    worker.add_argument("app", metavar="APP", help="the app: module:attribute (e.g. tasks:app)")
    worker.add_argument(
        "--workers",
        type=_positive_int,
        default=1,
        metavar="N",
        help="processes to run, each with its own connection (default: 1, in this process)",
    )
    worker.add_argument(
        "--drain-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="on a stop, how long running handlers may finish before their tasks are "
        "requeued (default: the app's drain_timeout, 25)",
    )
    worker.add_argument(
        "--log-level",
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        default="INFO",
        help="the lowest level logged to stderr (default: INFO)",
    )
    worker.add_argument(
        "--log-format",
        choices=["text", "json"],
        default="text",
        help="log lines as text or as one JSON object each (default: text)",
    )
    health = worker.add_argument_group("health")
    health.add_argument(
        "--health-port",
        type=int,
        default=None,
        metavar="PORT",
        help="serve GET /healthz on PORT: 200 when every process is connected and consuming, "
        "else 503 (0: any free port, logged)",
    )
    health.add_argument(
        "--health-host",
        default="127.0.0.1",
        metavar="HOST",
        help="the address of the health endpoint (default: 127.0.0.1; 0.0.0.0 in a container)",
    )
    health.add_argument(
        "--health-file",
        metavar="PATH",
        default=None,
        help="keep PATH (a JSON report) rewritten while healthy, removed while not",
    )
    health.add_argument(
        "--health-interval",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="how often the health file is rewritten; a worker process that was silent for "
        "3 times this long (a blocked event loop) is unhealthy (default: 5)",
    )
    worker.add_argument("--supervised-fd", type=int, default=None, help=argparse.SUPPRESS)
    worker.set_defaults(run=None)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _version_of(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:  # pragma: no cover
        return "?"

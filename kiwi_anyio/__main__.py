"""kiwi-anyio: send, serve and watch kiwiPy-style tasks, RPC calls and broadcasts.

Run it as "kiwi-anyio" or "python -m kiwi_anyio". The broker URL comes from --url (given
before or after the command) or the KIWI_ANYIO_URL environment variable, else
amqp://guest:guest@127.0.0.1/ (demo: memory://demo, the broker embedded in this process).

Messages given on the command line (TASK, MESSAGE, BODY, --answer) are parsed as YAML by
default (--yaml), as kiwiPy's default codec would carry them: 30 is the int 30, yes is True,
01 is 1, [1, 2] is a list, and text that is not valid YAML stays a string. --json parses
them as JSON instead (invalid JSON is a usage error); --raw sends the text as typed.

Output: results, tasks and broadcasts go to stdout, one per line (--jsonl: one JSON object
per line); progress, counts and errors go to stderr, errors as one line starting with
"kiwi-anyio: error:".

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

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import textwrap
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import sniffio
import yaml

from . import BroadcastFilter, KiwiError, RemoteException, UnroutableError, __version__
from . import connect as kiwi_connect
from .exceptions import ConnectionFailed, InvalidURL

PROG = "kiwi-anyio"
DEFAULT_URL = "amqp://guest:guest@127.0.0.1/"

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_CANNOT_CONNECT = 3
EXIT_TIMEOUT = 4
EXIT_INTERRUPTED = 130

#: commands that work on memory:// (they talk to themselves, in one process)
_MEMORY_OK = {"demo", "ping"}


class UsageError(Exception):
    """A command-line mistake found after parsing: exit code 2."""


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


async def demo(url: str, out: Any = sys.stdout) -> None:
    """Show the three patterns working against the broker at ``url``."""

    def say(text: str) -> None:
        print(text, file=out, flush=True)

    suffix = f"{os.getpid()}.{int(time.time())}"
    options: dict[str, Any] = {
        "message_exchange": f"kiwi-anyio-demo.messages.{suffix}",
        "task_exchange": f"kiwi-anyio-demo.tasks.{suffix}",
        "task_queue": f"kiwi-anyio-demo.tasks.{suffix}",
        "testing_mode": True,
    }
    async with kiwi_connect(url, **options) as comm:
        say(
            f"connected to {comm.server_properties.get('product')} at {url.split('@')[-1]}"
            f" (running on {sniffio.current_async_library()})"
        )

        def worker(_comm: Any, task: Any) -> Any:
            say(f"  [worker] got task {task!r}")
            return f"{task} done"

        async def fib(_comm: Any, n: int) -> int:
            a, b = 0, 1
            for _ in range(n):
                a, b = b, a + b
            return a

        async def fail(_comm: Any, msg: Any) -> None:
            raise ValueError(f"cannot handle {msg!r}")

        heard = anyio.Event()

        def listener(_comm: Any, body: Any, sender: Any, subject: Any, _cid: Any) -> None:
            say(f"  [listener] {subject} from {sender}: {body!r}")

        async def done_listening(*_: Any) -> None:
            heard.set()

        await comm.add_task_subscriber(worker)
        await comm.add_rpc_subscriber(fib, "fib")
        await comm.add_rpc_subscriber(fail, "fail")
        await comm.add_broadcast_subscriber(BroadcastFilter(listener, subject="kern.*"))
        await comm.add_broadcast_subscriber(BroadcastFilter(done_listening, subject="done"))

        say("tasks:")
        futures = [await comm.task_send(f"task {i}") for i in range(3)]
        for future in futures:
            assert future is not None
            say(f"  result: {await future.wait(30)!r}")
        say("rpc:")
        say(f"  fib(30) = {await (await comm.rpc_send('fib', 30)).wait(30)}")
        try:
            await (await comm.rpc_send("fail", "this")).wait(30)
        except RemoteException as exc:
            say(f"  remote exception: {exc}")
        try:
            await comm.rpc_send("nobody", 1)
        except UnroutableError:
            say("  rpc to 'nobody': UnroutableError (no such subscriber)")
        say("broadcasts (listener filters on 'kern.*'):")
        await comm.broadcast_send("disk full", sender="host1", subject="kern.critical")
        await comm.broadcast_send("backup ran", sender="host1", subject="cron.info")
        await comm.broadcast_send(None, subject="done")
        with anyio.fail_after(30):
            await heard.wait()
        say("done")


# --------------------------------------------------------------------------- input and output


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


def _output(args: argparse.Namespace, out: Any) -> Output:
    return Output(out, getattr(args, "jsonl", False))


def _message(args: argparse.Namespace, name: str) -> Any:
    return parse_message(getattr(args, name), getattr(args, "parse", "yaml"))


async def _report_every(counts: Counts, every: float) -> None:
    if every <= 0:
        return
    while True:
        await anyio.sleep(every)
        Output.status(f"so far: {counts.line()}")


# --------------------------------------------------------------------------- commands


async def _task_send(url: str, args: argparse.Namespace, out: Any) -> int:
    show = _output(args, out)
    task = _message(args, "task")
    async with kiwi_connect(url) as comm:
        queue = comm.task_queue(args.queue) if args.queue else comm._default_queue()
        future = await queue.task_send(task, no_reply=args.no_reply)
        show.status(f"sent {task!r} to {queue.name!r}")
        if future is not None:
            result = await future.unwrap(args.timeout)
            show.data(f"result: {result!r}", result=result)
    return EXIT_OK


async def _task_work(url: str, args: argparse.Namespace, out: Any) -> int:
    show = _output(args, out)
    answer = _message(args, "answer") if args.answer is not None else None
    counts: Counts = args.counts

    async def work(_comm: Any, task: Any) -> Any:
        counts.handled += 1
        show.data(f"task: {task!r}", task=task)
        return answer if args.answer is not None else task

    async with kiwi_connect(url) as comm:
        queue = comm.task_queue(args.queue, prefetch_count=args.prefetch) if args.queue else None
        target = queue or comm._default_queue()
        async with target.task_subscriber(work), anyio.create_task_group() as tg:
            counts.started, counts.running = time.monotonic(), True
            tg.start_soon(_report_every, counts, args.report_every)
            show.status(f"working on {target.name!r}; Ctrl-C to stop")
            await anyio.sleep_forever()
    return EXIT_OK


async def _task_dead_letters(url: str, args: argparse.Namespace, out: Any) -> int:
    show = _output(args, out)
    async with kiwi_connect(url) as comm:
        queue = comm.task_queue(args.queue) if args.queue else comm._default_queue()
        if args.requeue:
            moved = await queue.requeue_dead_letters()
            show.data(f"requeued {moved} dead letters to {queue.name!r}", requeued=moved)
        elif args.purge:
            purged = await queue.purge_dead_letters()
            show.data(f"purged {purged} dead letters of {queue.name!r}", purged=purged)
        else:
            dead = await queue.dead_letters()
            for letter in dead:
                show.data(
                    f"{letter.message_id}: {letter.task!r} ({letter.deliveries} deliveries, "
                    f"{letter.reason}; set aside by {letter.worker})",
                    message_id=letter.message_id,
                    task=letter.task,
                    deliveries=letter.deliveries,
                    reason=letter.reason,
                    worker=letter.worker,
                )
            show.status(f"{len(dead)} dead letters in {queue.dead_letter_queue!r}")
    return EXIT_OK


async def _rpc_call(url: str, args: argparse.Namespace, out: Any) -> int:
    show = _output(args, out)
    message = _message(args, "message")
    async with kiwi_connect(url) as comm:
        future = await comm.rpc_send(args.identifier, message)
        result = await future.unwrap(args.timeout)
        show.data(repr(result), result=result)
    return EXIT_OK


async def _broadcast_send(url: str, args: argparse.Namespace, out: Any) -> int:
    show = _output(args, out)
    body = _message(args, "body")
    async with kiwi_connect(url) as comm:
        await comm.broadcast_send(body, sender=args.sender, subject=args.subject)
        show.status(f"sent {body!r}")
    return EXIT_OK


async def _listen(url: str, args: argparse.Namespace, out: Any) -> int:
    show = _output(args, out)
    counts: Counts = args.counts

    def heard(_comm: Any, body: Any, sender: Any, subject: Any, correlation_id: Any) -> None:
        counts.handled += 1
        show.data(
            f"{subject} from {sender}: {body!r}",
            subject=subject,
            sender=sender,
            body=body,
            correlation_id=correlation_id,
        )

    async with kiwi_connect(url) as comm:
        listener = BroadcastFilter(heard, subject=args.subject, sender=args.sender)
        async with comm.broadcast_subscriber(listener), anyio.create_task_group() as tg:
            counts.started, counts.running = time.monotonic(), True
            tg.start_soon(_report_every, counts, args.report_every)
            show.status("listening; Ctrl-C to stop")
            await anyio.sleep_forever()
    return EXIT_OK


async def _ping(url: str, args: argparse.Namespace, out: Any) -> int:
    show = _output(args, out)
    start = time.perf_counter()
    async with kiwi_connect(url) as comm:
        connected = (time.perf_counter() - start) * 1000
        props = comm.server_properties
        server = {
            k: props[k] for k in ("product", "version", "platform", "cluster_name") if k in props
        }
        echo = f"ping-{os.getpid()}-{time.time_ns()}"
        async with comm.rpc_subscriber(lambda _c, m: m, echo):
            sent = time.perf_counter()
            await (await comm.rpc_send(echo, "ping")).wait(10)
            rpc = (time.perf_counter() - sent) * 1000
        if show.jsonl:
            show.data(
                "", url=comm.url, connect_ms=round(connected, 2), rpc_ms=round(rpc, 3), **server
            )
        else:
            show.data(f"connected to {comm.url} in {connected:.1f} ms")
            for key, value in server.items():
                show.data(f"  {key}: {value}")
            show.data(f"RPC round trip: {rpc:.2f} ms")
    return EXIT_OK


async def _demo(url: str, args: argparse.Namespace, out: Any) -> int:
    await demo(url, out)
    return EXIT_OK


# --------------------------------------------------------------------------- the parser


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
        default=60.0,
        metavar="SECONDS",
        help=f"print the count of {what} to stderr this often (0: only at exit; default: 60)",
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
    summary, _, details = (__doc__ or "").partition("\n\n")
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
    demo_.set_defaults(run=_demo)

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
    send.set_defaults(run=_task_send)

    work = command(
        task_sub,
        "work",
        "print each task (and answer it)",
        "Consume tasks from a queue, print each, answer it (with the task itself unless "
        "--answer). Runs until Ctrl-C; prints the count of tasks periodically and at exit.",
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
    work.set_defaults(run=_task_work, counts=Counts("task"))

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
    dead.set_defaults(run=_task_dead_letters)

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
    call.set_defaults(run=_rpc_call)

    broadcast = command(sub, "broadcast", "broadcasts")
    broadcast_sub = broadcast.add_subparsers(
        dest="broadcast_command", required=True, metavar="COMMAND", help=_SUBCOMMAND_HELP
    )
    bsend = command(broadcast_sub, "send", "send a broadcast", "Send BODY to every listener.")
    bsend.add_argument("body", metavar="BODY", help="the body (parsed as YAML unless --json/--raw)")
    bsend.add_argument("--subject", help="the broadcast's subject, e.g. kern.critical")
    bsend.add_argument("--sender", help="the broadcast's sender, e.g. host1")
    _add_message_format(bsend, "BODY")
    bsend.set_defaults(run=_broadcast_send)

    listen = command(
        sub,
        "listen",
        "print broadcasts (filters with * wildcards)",
        "Print every broadcast whose subject and sender match (* matches any text, e.g. "
        "kern.*). Runs until Ctrl-C; prints the count periodically and at exit.",
    )
    listen.add_argument("--subject", metavar="PATTERN", help="only subjects matching PATTERN")
    listen.add_argument("--sender", metavar="PATTERN", help="only senders matching PATTERN")
    _add_report_every(listen, "broadcasts")
    _add_jsonl(listen)
    listen.set_defaults(run=_listen, counts=Counts("broadcast"))

    ping = command(
        sub,
        "ping",
        "connect, show the broker, time an RPC",
        "Connect, print the broker's product and version and the time of one RPC round trip.",
    )
    _add_jsonl(ping)
    ping.set_defaults(run=_ping)

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


def _worker(args: argparse.Namespace) -> int:
    """``kiwi-anyio worker``: load the app, check the URL, serve (supervised with N > 1)."""
    from .protocol import parse_url
    from .worker import (
        AppLoadError,
        HealthReporter,
        SystemdNotifier,
        WorkerConfig,
        configure_logging,
        exit_leaving_threads,
        load_app,
        log_failure,
        run_in_process,
        supervise,
    )

    configure_logging(args.log_level, args.log_format)
    try:
        app = load_app(args.app)
    except AppLoadError as exc:
        return _fail(EXIT_USAGE, str(exc))
    url = args.url or app.url or DEFAULT_URL
    if url.startswith("memory:"):
        return _fail(
            EXIT_USAGE,
            f"{url} is a broker inside one process: give the worker an amqp:// URL "
            "(use app.test_client() for tests on memory://)",
        )
    try:
        parse_url(url)
    except InvalidURL as exc:
        return _fail(EXIT_USAGE, str(exc))
    health = HealthReporter(
        port=args.health_port,
        host=args.health_host,
        file=args.health_file,
        interval=args.health_interval,
        notifier=SystemdNotifier(),
    )
    if args.supervised_fd is not None:
        health = HealthReporter()  # the supervisor serves the health of all its children
    try:
        if args.workers > 1:
            if app._rpcs:
                return _fail(
                    EXIT_USAGE,
                    f"{args.app} has RPC subscribers ({', '.join(r.identifier for r in app._rpcs)})"
                    ": an RPC identifier is unique on the broker, so serve it with --workers 1",
                )
            anyio.run(_check_connection, url, app.options, backend=args.backend)
            config = WorkerConfig(
                app=args.app,
                url=url,
                backend=args.backend,
                workers=args.workers,
                # explicit, so that the supervisor knows how long a stop may take
                drain_timeout=app.drain_timeout
                if args.drain_timeout is None
                else args.drain_timeout,
                log_level=args.log_level,
                log_format=args.log_format,
                health_interval=args.health_interval,
            )
            return supervise(config, health)
        run_in_process(
            app,
            url=url,
            backend=args.backend,
            drain_timeout=args.drain_timeout,
            health=health,
            supervised_fd=args.supervised_fd,
            report_every=WorkerConfig(
                app="", url="", health_interval=args.health_interval
            ).report_every,
        )
        exit_leaving_threads(EXIT_OK)
        return EXIT_OK
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BaseException as raised:
        error = _leaf(raised)
        if isinstance(error, InvalidURL):
            return _fail(EXIT_USAGE, str(error))
        if isinstance(error, ConnectionFailed):
            return _fail(EXIT_CANNOT_CONNECT, str(error))
        if isinstance(error, Exception):
            log_failure(error, f"{app.name} failed")
            return _fail(EXIT_FAILED, f"{app.name} failed: {type(error).__name__}: {error}")
        raise


async def _check_connection(url: str, options: dict[str, Any]) -> None:
    """Connect once, so that a bad URL or login fails in one line before any child starts."""
    async with kiwi_connect(url, **options):
        pass


def _version_of(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:  # pragma: no cover
        return "?"


def _command_name(args: argparse.Namespace) -> str:
    """E.g. ``"task send"``."""
    words = [args.command]
    for dest in ("task_command", "rpc_command", "broadcast_command"):
        if getattr(args, dest, None):
            words.append(getattr(args, dest))
    return " ".join(words)


def _leaf(error: BaseException) -> BaseException:
    """The one exception inside (nested) single-exception groups."""
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error


def _fail(code: int, message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)
    return code


def main(argv: Sequence[str] | None = None, out: Any = None) -> int:
    """Entry point of ``kiwi-anyio`` / ``python -m kiwi_anyio``; returns the exit code.

    Ctrl-C stops a command with exit code 130 (``task work`` and ``listen`` print their
    counts first; a task in hand is given back to the broker)."""
    out = out or sys.stdout
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "worker":
        return _worker(args)
    url = args.url or ("memory://demo" if args.command == "demo" else DEFAULT_URL)
    counts: Counts | None = getattr(args, "counts", None)
    if url.startswith("memory:") and args.command not in _MEMORY_OK:
        return _fail(
            EXIT_USAGE,
            f"{url} is a broker inside one process, so `{_command_name(args)}` would only talk to "
            "itself: give an amqp:// URL (memory:// works with demo and ping)",
        )
    try:
        return int(anyio.run(args.run, url, args, out, backend=args.backend))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # e.g. `kiwi-anyio listen | head`: the reader is gone
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so that the exit's flush does not fail
        return EXIT_FAILED
    except BaseException as raised:
        error = _leaf(raised)
        if isinstance(error, UsageError | InvalidURL):
            return _fail(EXIT_USAGE, str(error))
        if isinstance(error, ConnectionFailed):
            return _fail(EXIT_CANNOT_CONNECT, str(error))
        if isinstance(error, TimeoutError):
            timeout = getattr(args, "timeout", None)
            if timeout is None:
                return _fail(EXIT_TIMEOUT, str(error) or "timed out")
            return _fail(EXIT_TIMEOUT, f"no result within {timeout} s (--timeout {timeout})")
        if isinstance(error, UnroutableError) and args.command == "rpc":
            return _fail(EXIT_FAILED, f"no RPC subscriber {args.identifier!r}")
        if isinstance(error, RemoteException):
            return _fail(EXIT_FAILED, f"remote exception: {error}")
        if isinstance(error, KiwiError):
            return _fail(EXIT_FAILED, str(error))
        if error is not raised and isinstance(error, KeyboardInterrupt):
            return EXIT_INTERRUPTED
        raise
    finally:
        if counts is not None and counts.running:
            Output.status(f"stopped after {counts.line()}")


if __name__ == "__main__":
    sys.exit(main())

"""The kiwi-anyio command line, run as processes against the test broker."""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import pytest

import kiwi_anyio
from kiwi_anyio import BroadcastFilter
from kiwi_anyio.channel import Message
from kiwi_anyio.codecs import YAML, codec_from_functions
from kiwi_anyio.exceptions import RemoteException
from kiwi_anyio.hooks import DeliveryHandler
from tests.test_examples import Program

pytestmark = pytest.mark.broker


def run(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """``python -m kiwi_anyio ARGS``."""
    return subprocess.run(
        [sys.executable, "-m", "kiwi_anyio", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )


def cli(url: str, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kiwi_anyio", "--url", url, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )


@pytest.fixture
def background(broker_url: str) -> Iterator[Callable[..., Program]]:
    started: list[Program] = []

    def start(*args: str) -> Program:
        program = Program(
            "-m",
            "kiwi_anyio",
            "--url",
            broker_url,
            *args,
            url=broker_url,
        )
        started.append(program)
        return program

    yield start
    for program in started:
        program.stop()


def test_ping(broker_url: str) -> None:
    result = cli(broker_url, "ping")
    assert result.returncode == 0, result.stderr
    assert "product: RabbitMQ" in result.stdout
    assert "RPC round trip" in result.stdout


def test_task_send_and_work(broker_url: str, background: Callable[..., Program]) -> None:
    queue = f"cli-{uuid.uuid4().hex}"
    worker = background("task", "work", "--queue", queue, "--answer", "42")
    worker.wait_for("working on")
    result = cli(broker_url, "task", "send", "--queue", queue, "hello", "--timeout", "20")
    assert result.returncode == 0, result.stderr
    assert "result: 42" in result.stdout
    worker.wait_for("task: 'hello'")


def test_rpc_call_unroutable_and_exit_code(broker_url: str) -> None:
    result = cli(broker_url, "rpc", "call", f"nobody-{uuid.uuid4().hex}", "1")
    assert result.returncode == 1
    assert result.stderr.startswith("kiwi-anyio: error: no RPC subscriber")
    assert result.stdout == ""


def test_listen_and_broadcast(broker_url: str, background: Callable[..., Program]) -> None:
    listener = background("listen", "--subject", "kern.*")
    listener.wait_for("listening")
    for subject in ("cron.info", "kern.critical"):
        result = cli(broker_url, "broadcast", "send", f"{subject} body", "--subject", subject)
        assert result.returncode == 0, result.stderr
    listener.wait_for("kern.critical from None: 'kern.critical body'")
    assert not any("cron.info" in line for line in listener.drain())


def test_bad_login_is_a_clear_error_without_the_password(broker_url: str) -> None:
    url = broker_url.replace("guest:guest@", "guest:s3cr3t-pw@")
    result = cli(url, "ping")
    assert result.returncode == 3  # cannot connect
    assert "refused the login of user 'guest'" in result.stderr
    assert "s3cr3t-pw" not in result.stdout + result.stderr


def test_bad_url_is_a_clear_error(broker_url: str) -> None:
    result = cli("amqp://guest:s3cr3t-pw@localhost:notaport/", "ping")
    assert result.returncode == 2  # usage
    assert "port" in result.stderr
    assert "s3cr3t-pw" not in result.stdout + result.stderr


def test_demo_runs_on_the_memory_broker_by_default() -> None:
    """`bash scripts/run` (no URL) needs no RabbitMQ: the demo uses memory://."""
    import io

    from kiwi_anyio.__main__ import main

    out = io.StringIO()
    env_url = os.environ.pop("KIWI_ANYIO_URL", None)
    try:
        assert main(["demo"], out=out) == 0
    finally:
        if env_url is not None:
            os.environ["KIWI_ANYIO_URL"] = env_url
    text = out.getvalue()
    assert "connected to kiwi_anyio memory broker at memory://demo (running on asyncio)" in text
    assert "result: 'task 2 done'" in text
    assert "fib(30) = 832040" in text
    assert "UnroutableError" in text
    assert "kern.critical" in text and "cron.info" not in text


# --------------------------------------------------------------------------- help, usage, codes


def _parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                yield from _parsers(child)


def test_every_option_has_help_and_no_help_has_rst_markup() -> None:
    from kiwi_anyio.__main__ import build_parser

    parsers = list(_parsers(build_parser()))
    assert len(parsers) == 13  # kiwi-anyio, 7 commands, 5 sub-commands
    for parser in parsers:
        for action in parser._actions:
            assert action.help, f"{parser.prog}: {action.dest} has no help"
        text = parser.format_help()
        for markup in ("``", ":class:", ":func:", ":meth:", "::"):
            assert markup not in text, f"{parser.prog} --help shows {markup!r}"


def test_help_and_version_run_as_commands() -> None:
    from kiwi_anyio import __version__

    result = run("--help")
    assert result.returncode == 0
    assert "Exit codes:" in result.stdout and "3    cannot connect" in result.stdout
    assert "--yaml" in result.stdout and "KIWI_ANYIO_URL" in result.stdout
    result = run("task", "send", "--help")
    assert result.returncode == 0 and "--raw" in result.stdout and "--timeout" in result.stdout
    result = run("--version")
    assert result.returncode == 0
    assert result.stdout.startswith(f"kiwi-anyio {__version__} (Python ")


def test_a_usage_error_exits_2_on_stderr() -> None:
    result = run("bogus")
    assert result.returncode == 2
    assert result.stdout == "" and "invalid choice: 'bogus'" in result.stderr


@pytest.mark.parametrize("where", ["before", "after"])
def test_the_url_goes_before_or_after_the_command(where: str) -> None:
    args = ["--url", "memory://cli-url", "ping"]
    result = run(*(args if where == "before" else [*args[2:], *args[:2]]))
    assert result.returncode == 0, result.stderr
    assert "connected to memory://cli-url" in result.stdout


def test_the_url_after_the_command_wins_over_the_environment() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kiwi_anyio", "ping", "--url", "memory://given"],
        capture_output=True,
        text=True,
        timeout=30,
        env=dict(os.environ, KIWI_ANYIO_URL="amqp://guest:guest@127.0.0.1:1/"),
    )
    assert result.returncode == 0, result.stderr
    assert "memory://given" in result.stdout


@pytest.mark.parametrize(
    ("name", "args"),
    [
        ("task send", ["hi"]),
        ("task work", []),
        ("rpc call", ["x", "1"]),
        ("broadcast send", ["hi"]),
        ("listen", []),
    ],
)
def test_memory_urls_are_refused_where_nobody_else_could_answer(name: str, args: list[str]) -> None:
    result = run("--url", "memory://", *name.split(), *args, timeout=15)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("kiwi-anyio: error: memory:// is a broker inside one process")
    assert f"`{name}`" in result.stderr


def test_cannot_connect_exits_3_in_one_line() -> None:
    result = run("--url", "amqp://guest:s3cr3t@127.0.0.1:1/?connection_timeout=2000", "ping")
    assert result.returncode == 3
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("kiwi-anyio: error:")
    assert "127.0.0.1:1" in result.stderr and "s3cr3t" not in result.stderr


def test_invalid_json_input_is_a_usage_error() -> None:
    result = run("--url", "amqp://guest:guest@127.0.0.1:1/", "rpc", "call", "x", "{bad", "--json")
    assert result.returncode == 2
    assert "is not valid JSON" in result.stderr and "--raw" in result.stderr


def test_parse_message_formats() -> None:
    from kiwi_anyio.__main__ import UsageError, parse_message

    assert parse_message("yes") is True
    assert parse_message("01") == 1
    assert parse_message("[1, a]") == [1, "a"]
    assert parse_message("a: [") == "a: ["  # not YAML: the text
    assert parse_message("yes", "raw") == "yes"
    assert parse_message("01", "raw") == "01"
    assert parse_message('{"a": [1, "yes"]}', "json") == {"a": [1, "yes"]}
    with pytest.raises(UsageError):
        parse_message("yes", "json")


def test_message_formats_and_json_lines(
    broker_url: str, background: Callable[..., Program]
) -> None:
    queue = f"cli-{uuid.uuid4().hex}"
    worker = background("task", "work", "--queue", queue, "--jsonl")
    worker.wait_for("working on")
    sent = [("01", "--yaml", 1), ("yes", "--yaml", True), ("01", "--raw", "01")]
    sent += [('"yes"', "--json", "yes"), ('{"a": [1]}', "--json", {"a": [1]})]
    for text, how, expected in sent:
        result = cli(broker_url, "task", "send", text, how, "--queue", queue, "--jsonl")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout) == {"result": expected}, result.stdout
    seen = [json.loads(worker.wait_for('{"task"')) for _ in sent]
    assert seen == [{"task": expected} for _, _, expected in sent]


def test_a_timeout_is_one_line_and_exit_code_4(broker_url: str) -> None:
    queue = f"cli-{uuid.uuid4().hex}"
    result = cli(broker_url, "task", "send", "--queue", queue, "hello", "--timeout", "1")
    assert result.returncode == 4, result.stderr
    lines = result.stderr.splitlines()
    assert lines[-1] == "kiwi-anyio: error: no result within 1.0 s (--timeout 1.0)", lines
    assert "Traceback" not in result.stderr and len(lines) <= 2  # "sent ..." and the error


def test_work_and_listen_print_counts(broker_url: str, background: Callable[..., Program]) -> None:
    queue = f"cli-{uuid.uuid4().hex}"
    worker = background("task", "work", "--queue", queue, "--report-every", "0.3")
    listener = background("listen", "--subject", "count.*", "--report-every", "0.3", "--jsonl")
    worker.wait_for("working on")
    listener.wait_for("listening")
    worker.wait_for("so far: 0 tasks in")
    assert cli(broker_url, "task", "send", "--queue", queue, "x").returncode == 0
    assert cli(broker_url, "broadcast", "send", "b", "--subject", "count.me").returncode == 0
    worker.wait_for("so far: 1 task in")
    heard = json.loads(listener.wait_for('{"subject"'))
    assert heard == {"subject": "count.me", "sender": None, "body": "b", "correlation_id": None}
    listener.wait_for("so far: 1 broadcast in")
    for program, count in ((worker, "1 task in"), (listener, "1 broadcast in")):
        program.process.send_signal(signal.SIGINT)
        assert program.finish() == 130
        assert any(line.startswith(f"stopped after {count}") for line in program.seen)


# --------------------------------------------------------------------------- the running summary

#: the running line of ``task work`` and ``listen`` on a terminal
RUNNING = re.compile(
    r"^(?P<handled>[\d,]+) handled · (?P<failed>[\d,]+) failed · [\d,.]+/s "
    r"\(last (?P<every>[\d.]+) s\) · \d+ s$"
)


def render(shown: str) -> list[str]:
    """The lines a terminal shows for ``shown``: ``\\r`` goes back to the start of the line,
    ``ESC [K`` clears to its end, ``\\n`` starts a new line, other text overwrites."""
    lines, column = [""], 0
    for part in re.split(r"(\x1b\[K|\r|\n)", shown):
        line = lines[-1]
        if part == "\x1b[K":
            lines[-1] = line[:column]
        elif part == "\r":
            column = 0
        elif part == "\n":
            lines.append("")
            column = 0
        elif part:
            lines[-1] = line[:column].ljust(column) + part + line[column + len(part) :]
            column += len(part)
    return lines


def test_render_is_a_terminal() -> None:
    assert render("abc\rX") == ["Xbc"]
    assert render("abc\r\x1b[Kd\r\n") == ["d", ""]
    assert render("12 handled\rtask: 1\r\n") == ["task: 1led", ""]  # what clearing prevents


class Terminal:
    """``python -m kiwi_anyio --url URL ARGS`` with stdout and stderr on one pseudo-terminal;
    a thread collects what the terminal shows."""

    def __init__(self, url: str, *args: str) -> None:
        master, slave = os.openpty()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "kiwi_anyio", "--url", url, *args],
            stdin=subprocess.DEVNULL,
            stdout=slave,
            stderr=slave,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
        os.close(slave)
        self._master = master
        self._shown = bytearray()
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self._master, 4096)
            except OSError:  # EIO: the program closed the terminal
                return
            if not chunk:
                return
            with self._lock:
                self._shown += chunk

    @property
    def shown(self) -> str:
        with self._lock:
            return self._shown.decode(errors="replace")

    def screen(self) -> list[str]:
        return render(self.shown)

    def wait_for_running(self, handled: int, failed: int, timeout: float = 20) -> str:
        """The running line (the terminal's last line) once it shows these counts."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            last = self.screen()[-1]
            match = RUNNING.match(last)
            if match and (match["handled"], match["failed"]) == (str(handled), str(failed)):
                return last
            time.sleep(0.05)
        raise AssertionError(f"no running line {handled} handled, {failed} failed: {self.screen()}")

    def wait_for_line(self, text: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.screen()):
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not shown: {self.screen()}")
            time.sleep(0.05)

    def interrupt(self, timeout: float = 20) -> int:
        """Ctrl-C; the exit code (the output read to the end)."""
        self.process.send_signal(signal.SIGINT)
        code = self.process.wait(timeout)
        self._reader.join(timeout)
        return code

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self._reader.join(10)
        os.close(self._master)


@pytest.fixture
def terminal(broker_url: str) -> Iterator[Callable[..., Terminal]]:
    started: list[Terminal] = []

    def start(*args: str) -> Terminal:
        started.append(Terminal(broker_url, *args))
        return started[-1]

    yield start
    for program in started:
        program.close()


#: a codec that sends a body no YAML decoder accepts, and reads replies as YAML
UNDECODABLE = codec_from_functions(lambda _obj: b"{unclosed: [", YAML.decode, "application/yaml")


def send(url: str, queue: str | None = None, subject: str | None = None) -> None:
    """To ``queue``, the task "hello" and one undecodable task (each answered before it
    returns); or, with ``subject``, the broadcast "hello" and an undecodable one."""

    async def main() -> None:
        with anyio.fail_after(30):
            async with (
                kiwi_anyio.connect(url) as comm,
                kiwi_anyio.connect(url, codec=UNDECODABLE) as bad,
            ):
                if subject is not None:
                    await comm.broadcast_send("hello", subject=subject)
                    await bad.broadcast_send("hello", subject=subject)
                    return
                assert queue is not None
                future = await comm.task_queue(queue).task_send("hello")
                assert future is not None and await future.wait(20) == "hello"
                future = await bad.task_queue(queue).task_send("hello")
                assert future is not None
                with pytest.raises(RemoteException, match="YAML"):
                    await future.wait(20)

    anyio.run(main)


def test_task_work_keeps_a_running_line_on_a_terminal(
    broker_url: str, terminal: Callable[..., Terminal]
) -> None:
    queue = f"cli-{uuid.uuid4().hex}"
    worker = terminal("task", "work", "--queue", queue)
    worker.wait_for_line("working on")
    first = worker.wait_for_running(0, 0)  # every 2 s by default
    assert "(last 2 s)" in first
    send(broker_url, queue=queue)
    worker.wait_for_running(1, 1)
    screen = worker.screen()
    # the data line was written while the running line was shown: it has a line of its own
    assert "task: 'hello'" in screen, screen
    # rewritten in place: only the last line is a running line
    assert not any(RUNNING.match(line) for line in screen[:-1]), screen
    assert "so far" not in worker.shown
    assert worker.interrupt() == 130
    screen = [line for line in worker.screen() if line]
    assert not any(RUNNING.match(line) for line in screen), screen  # cleared at exit
    assert screen[-1].startswith("stopped after 1 task in "), screen
    assert re.search(r"\(1 failed, [\d.]+/s\)$", screen[-1]), screen


def test_listen_counts_failed_broadcasts_on_a_terminal(
    broker_url: str, terminal: Callable[..., Terminal]
) -> None:
    subject = f"tty.{uuid.uuid4().hex}"
    listener = terminal("listen", "--subject", subject, "--report-every", "0.3", "--jsonl")
    listener.wait_for_line("listening")
    assert "(last 0.3 s)" in listener.wait_for_running(0, 0)
    send(broker_url, subject=subject)
    listener.wait_for_running(1, 1)
    heard = [line for line in listener.screen() if line.startswith("{")]
    assert [json.loads(line)["body"] for line in heard] == ["hello"], listener.screen()
    assert listener.interrupt() == 130
    last = [line for line in listener.screen() if line][-1]
    assert last.startswith("stopped after 1 broadcast in ") and "(1 failed, " in last


def test_no_running_line_when_piped(broker_url: str, background: Callable[..., Program]) -> None:
    queue = f"cli-{uuid.uuid4().hex}"
    worker = background("task", "work", "--queue", queue)
    worker.wait_for("working on")
    send(broker_url, queue=queue)
    worker.wait_for("task: 'hello'")
    time.sleep(2.5)  # longer than a terminal's interval
    worker.process.send_signal(signal.SIGINT)
    assert worker.finish() == 130
    assert not any("handled" in line or "so far" in line or "\r" in line for line in worker.seen)
    assert worker.seen[-1].startswith("stopped after 1 task in "), worker.seen
    assert "(1 failed, " in worker.seen[-1], worker.seen


@pytest.mark.anyio
async def test_failures_are_counted_through_the_delivery_seam() -> None:
    """What ``task work`` and ``listen`` count as failed: a subscriber that raised, a body
    that cannot be decoded; each message once, and only on the consumer named."""
    from kiwi_anyio.cli.progress import Counts, count_failures

    url = f"memory://cli-{uuid.uuid4().hex}"
    tasks, broadcasts = Counts("task"), Counts("broadcast")
    done: dict[str, int] = {}

    def watch(handler: DeliveryHandler, what: str) -> DeliveryHandler:
        async def watched(message: Message) -> None:
            await handler(message)
            done[what] = done.get(what, 0) + 1

        return watched

    async def until_done(what: str, count: int) -> None:
        while done.get(what, 0) < count:
            await anyio.sleep(0.01)

    async def task(_comm: Any, n: int) -> int:
        if n < 0:
            raise ValueError(f"no negative tasks: {n}")
        return n

    async def boom(*_: Any) -> None:
        raise ValueError("boom")

    with anyio.fail_after(30):
        async with (
            kiwi_anyio.connect(url) as worker,
            kiwi_anyio.connect(url) as sender,
            kiwi_anyio.connect(url, codec=UNDECODABLE) as bad,
        ):
            queue = f"cli-{uuid.uuid4().hex}"
            consumer = f"task queue {queue!r}"
            worker.hooks.add_delivery_middleware(watch)  # the outermost: sees the end
            worker.hooks.add_delivery_middleware(count_failures(tasks, consumer))
            worker.hooks.add_delivery_middleware(count_failures(broadcasts, "broadcasts"))
            await worker.task_queue(queue).add_task_subscriber(task)
            for _ in range(2):  # two subscribers fail on one broadcast: one failure
                await worker.add_broadcast_subscriber(BroadcastFilter(boom, subject="boom"))

            assert await (await sender.task_queue(queue).task_send(1)).wait(10) == 1
            assert tasks.failed == 0
            with pytest.raises(RemoteException, match="no negative tasks"):
                await (await sender.task_queue(queue).task_send(-1)).wait(10)
            await until_done(consumer, 2)
            assert tasks.failed == 1
            with pytest.raises(RemoteException, match="YAML"):
                await (await bad.task_queue(queue).task_send(1)).wait(10)
            await until_done(consumer, 3)
            assert tasks.failed == 2

            await sender.broadcast_send("x", subject="boom")
            await until_done("broadcasts", 1)
            assert broadcasts.failed == 1
            await bad.broadcast_send("x", subject="fine")
            await sender.broadcast_send("x", subject="fine")
            await until_done("broadcasts", 3)
            assert (broadcasts.failed, tasks.failed) == (2, 2)

"""``kiwi-anyio worker``: real processes on the real broker, on asyncio and trio.

The app is tests/worker_app.py; each test gives it a queue and exchanges of its own and a log
file where every task writes ``start ID PID`` and ``done ID PID``, so that "done exactly
once" and "nothing lost" are read from the log and the senders' results.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import pytest

import kiwi_anyio
from tests.proxy import run_proxy

pytestmark = [pytest.mark.anyio, pytest.mark.broker]

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 30


class Worker:
    """A ``python -m kiwi_anyio worker`` process whose output lines a thread collects."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "kiwi_anyio", "worker", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=ROOT,
            env=env,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))

    def output(self) -> list[str]:
        while True:
            try:
                self.seen.append(self.lines.get_nowait())
            except queue.Empty:
                return self.seen

    async def wait_for(self, text: str, timeout: float = TIMEOUT) -> str:
        with anyio.fail_after(timeout):
            while True:
                for line in self.output():
                    if text in line:
                        return line
                await anyio.sleep(0.05)

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    async def exit_code(self, timeout: float = TIMEOUT) -> int:
        with anyio.fail_after(timeout):
            while self.process.poll() is None:
                await anyio.sleep(0.05)
        self._reader.join(5)
        self.output()
        return self.process.returncode

    def close(self) -> None:
        if self.process.poll() is None:  # a failed test: stop at once, children too
            self.process.send_signal(signal.SIGTERM)
            time.sleep(0.2)
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._reader.join(5)
        if self.process.stdout is not None:
            self.process.stdout.close()


@dataclass
class Setup:
    """One test's queue, exchanges, log file and workers."""

    url: str
    backend: str
    tmp: Path
    suffix: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    workers: list[Worker] = field(default_factory=list)

    @property
    def queue(self) -> str:
        return f"worker-test-{self.suffix}"

    @property
    def log(self) -> Path:
        return self.tmp / "tasks.log"

    def env(self, **extra: str) -> dict[str, str]:
        return dict(
            os.environ,
            PYTHONUNBUFFERED="1",
            PYTHONPATH=str(ROOT),
            WORKER_TEST_QUEUE=self.queue,
            WORKER_TEST_EXCHANGE=self.suffix,
            WORKER_TEST_LOG=str(self.log),
            **extra,
        )

    def start(self, *args: str, url: str | None = None, **extra_env: str) -> Worker:
        worker = Worker(
            [
                "tests.worker_app:app",
                "--url",
                url or self.url,
                "--backend",
                self.backend,
                *args,
            ],
            self.env(**extra_env),
        )
        self.workers.append(worker)
        return worker

    def options(self) -> dict[str, Any]:
        return {
            "message_exchange": f"worker-test.messages.{self.suffix}",
            "task_exchange": f"worker-test.tasks.{self.suffix}",
            "task_queue": f"worker-test.tasks.{self.suffix}",
        }

    def entries(self) -> list[tuple[str, int, int]]:
        if not self.log.exists():
            return []
        rows = [line.split() for line in self.log.read_text().splitlines()]
        return [(what, int(ident), int(pid)) for what, ident, pid in rows]

    def done(self) -> Counter[int]:
        return Counter(ident for what, ident, _ in self.entries() if what == "done")

    def started(self) -> list[int]:
        return [ident for what, ident, _ in self.entries() if what == "start"]

    async def wait_started(self, count: int) -> None:
        with anyio.fail_after(TIMEOUT):
            while len(self.started()) < count:
                await anyio.sleep(0.05)


@pytest.fixture
def setup(broker_url: str, anyio_backend: str, tmp_path: Path) -> Iterator[Setup]:
    setup = Setup(broker_url, anyio_backend, tmp_path)
    yield setup
    for worker in setup.workers:
        worker.close()
        # shown by pytest only when the test failed: what each worker said
        print(f"--- {worker.process.args!r}", *worker.output(), sep="\n")


def command_line(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get(port: int) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())
    except OSError:
        return 0, {}


async def health(port: int) -> tuple[int, dict[str, Any]]:
    return await anyio.to_thread.run_sync(_get, port)


async def wait_health(port: int, code: int, timeout: float = TIMEOUT) -> dict[str, Any]:
    with anyio.fail_after(timeout):
        while True:
            status, report = await health(port)
            if status == code:
                return report
            await anyio.sleep(0.1)


# --------------------------------------------------------------------------- serving


async def test_three_workers_do_3000_tasks_exactly_once(setup: Setup) -> None:
    port = free_port()
    worker = setup.start(
        "--workers", "3", "--health-port", str(port), "--log-format", "json",
        WORKER_TEST_PREFETCH="20",
    )  # fmt: skip
    report = await wait_health(port, 200)
    assert [w["state"] for w in report["workers"]] == ["running"] * 3
    for child in report["workers"]:  # the URL (and its password) is not on a command line
        assert "guest:guest" not in command_line(child["pid"])
    with anyio.fail_after(60):
        async with kiwi_anyio.connect(setup.url, **setup.options()) as comm:
            tasks = comm.task_queue(setup.queue)
            futures: list[kiwi_anyio.Future[Any]] = []

            async def send(first: int) -> None:
                for i in range(first, 3000, 10):
                    future = await tasks.task_send({"id": i})
                    assert future is not None
                    futures.append(future)

            async with anyio.create_task_group() as tg:
                for first in range(10):
                    tg.start_soon(send, first)
            results = [await future for future in futures]
    assert sorted(r["id"] for r in results) == list(range(3000))
    pids = Counter(r["pid"] for r in results)
    assert len(pids) == 3, pids  # every process took some
    assert set(pids) == {w["pid"] for w in report["workers"]}
    assert setup.done() == Counter(range(3000))  # each done exactly once
    worker.signal(signal.SIGTERM)
    assert await worker.exit_code() == 0
    records = [json.loads(line) for line in worker.output() if line.strip()]
    assert {r["level"] for r in records} <= {"DEBUG", "INFO", "WARNING", "ERROR"}
    assert {r.get("worker") for r in records} >= {0, 1, 2}
    assert any("SIGTERM" in r["message"] for r in records)


async def test_sigterm_lets_running_tasks_finish_and_requeues_the_rest(setup: Setup) -> None:
    worker = setup.start("--workers", "2", "--drain-timeout", "20")
    await worker.wait_for("serving on", 20)
    with anyio.fail_after(60):
        async with kiwi_anyio.connect(setup.url, **setup.options()) as comm:
            tasks = comm.task_queue(setup.queue)
            futures = [await tasks.task_send({"id": i, "sleep": 1.5}) for i in range(6)]
            await setup.wait_started(2)  # one in each process (prefetch 1)
            running = setup.started()
            start = time.monotonic()
            worker.signal(signal.SIGTERM)
            assert await worker.exit_code() == 0
            assert time.monotonic() - start < 10
            assert sorted(setup.done()) == sorted(running)  # the running ones finished ...
            for i in running:
                future = futures[i]
                assert future is not None
                assert (await future.wait(5))["id"] == i  # ... and answered
            assert len(setup.started()) == 2  # nothing else was taken
            later = setup.start("--workers", "1", WORKER_TEST_FAST="1")
            results = [await future for future in futures if future is not None]
    assert [r["id"] for r in results] == list(range(6))  # nothing lost ...
    assert setup.done() == Counter(range(6))  # ... nothing done twice
    later.signal(signal.SIGINT)
    assert await later.exit_code() == 0


async def test_sigterm_under_load_loses_nothing_and_does_nothing_twice(setup: Setup) -> None:
    worker = setup.start("--workers", "2", WORKER_TEST_PREFETCH="5")
    with anyio.fail_after(60):
        async with kiwi_anyio.connect(setup.url, **setup.options()) as comm:
            tasks = comm.task_queue(setup.queue)
            futures = [await tasks.task_send({"id": i, "sleep": 0.05}) for i in range(300)]
            while len(setup.done()) < 60:  # in the middle of the load
                await anyio.sleep(0.01)
            worker.signal(signal.SIGTERM)
            assert await worker.exit_code() == 0
            first = setup.done()
            assert sorted(first) == sorted(setup.started())  # every started task finished
            assert 60 <= len(first) < 300
            later = setup.start(WORKER_TEST_FAST="1", WORKER_TEST_PREFETCH="50")
            results = [await future for future in futures if future is not None]
    assert [r["id"] for r in results] == list(range(300))
    assert setup.done() == Counter(range(300))
    later.signal(signal.SIGTERM)
    assert await later.exit_code() == 0


def start_app_run(setup: Setup) -> subprocess.Popen[str]:
    """``app.run()`` in a process of its own."""
    code = (
        "from tests.worker_app import app; "
        f"app.run({setup.url!r}, backend={setup.backend!r}, drain_timeout=10)"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=setup.env(),
        stderr=subprocess.PIPE,
        text=True,
    )


async def test_app_run_serves_until_ctrl_c_and_drains(setup: Setup) -> None:
    process = start_app_run(setup)
    try:
        with anyio.fail_after(60):
            async with kiwi_anyio.connect(setup.url, **setup.options()) as comm:
                future = await comm.task_queue(setup.queue).task_send({"id": 7, "sleep": 1})
                await setup.wait_started(1)
                process.send_signal(signal.SIGINT)
                assert future is not None and (await future)["id"] == 7
            while process.poll() is None:
                await anyio.sleep(0.05)
        assert process.stderr is not None
        log = process.stderr.read()
        assert process.returncode == 0, log
        assert "SIGINT: stopping gracefully" in log and "worker-test: stopped" in log
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)
        if process.stderr is not None:
            process.stderr.close()


async def test_a_blocking_handler_past_the_drain_timeout_does_not_hold_the_exit(
    setup: Setup,
) -> None:
    worker = setup.start("--drain-timeout", "1")
    await worker.wait_for("serving on", 20)
    with anyio.fail_after(60):
        async with kiwi_anyio.connect(setup.url, **setup.options()) as comm:
            tasks = comm.task_queue(f"{setup.queue}-sync")
            future = await tasks.task_send({"id": 0, "sleep": 60})
            await setup.wait_started(1)
            start = time.monotonic()
            worker.signal(signal.SIGTERM)
            assert await worker.exit_code() == 0
            assert time.monotonic() - start < 8
            if setup.backend == "asyncio":  # trio's worker threads are daemons: no wait anyway
                assert any("still running" in line for line in worker.output()), worker.output()
            later = setup.start(WORKER_TEST_FAST="1")
            assert future is not None and (await future)["id"] == 0  # requeued, done later
    later.signal(signal.SIGTERM)
    assert await later.exit_code() == 0


async def test_a_second_signal_exits_at_once_and_the_tasks_are_redelivered(setup: Setup) -> None:
    worker = setup.start("--workers", "2", "--drain-timeout", "60")
    await worker.wait_for("serving on", 20)
    with anyio.fail_after(60):
        async with kiwi_anyio.connect(setup.url, **setup.options()) as comm:
            tasks = comm.task_queue(setup.queue)
            futures = [await tasks.task_send({"id": i, "sleep": 600}) for i in range(3)]
            await setup.wait_started(2)
            worker.signal(signal.SIGTERM)
            await worker.wait_for("the supervisor says stop")
            start = time.monotonic()
            worker.signal(signal.SIGTERM)
            assert await worker.exit_code(10) == 130
            assert time.monotonic() - start < 5
            assert not setup.done()
            later = setup.start(WORKER_TEST_FAST="1")
            results = [await future for future in futures if future is not None]
    assert [r["id"] for r in results] == [0, 1, 2]
    later.signal(signal.SIGTERM)
    assert await later.exit_code() == 0


async def test_a_crashed_or_killed_child_is_restarted(setup: Setup) -> None:
    port = free_port()
    worker = setup.start("--workers", "2", "--health-port", str(port))
    report = await wait_health(port, 200)
    with anyio.fail_after(60):
        async with kiwi_anyio.connect(setup.url, **setup.options()) as comm:
            tasks = comm.task_queue(setup.queue)
            crash = setup.tmp / "crashed"
            future = await tasks.task_send({"id": 0, "crash": str(crash)})
            assert future is not None
            assert (await future)["id"] == 0  # redelivered and done by someone
            crashed = int(crash.read_text())
            await worker.wait_for("exited with code 1")
            await worker.wait_for("restarting in")
            report = await wait_health(port, 200)
            assert sum(w["restarts"] for w in report["workers"]) == 1, (
                worker.output(),
                setup.entries(),
            )
            assert crashed not in {w["pid"] for w in report["workers"]}
            # SIGKILL a child in the middle of a task: its task is done by someone
            futures = [await tasks.task_send({"id": i, "sleep": 1}) for i in (1, 2)]
            await setup.wait_started(4)  # 0 twice, 1, 2
            victim = report["workers"][0]["pid"]
            os.kill(victim, signal.SIGKILL)
            await worker.wait_for("exited with signal SIGKILL")
            assert sorted([(await f)["id"] for f in futures if f is not None]) == [1, 2]
            report = await wait_health(port, 200)
            assert victim not in {w["pid"] for w in report["workers"]}
    worker.signal(signal.SIGTERM)
    assert await worker.exit_code() == 0


async def test_a_child_whose_event_loop_is_blocked_turns_unhealthy(setup: Setup) -> None:
    port = free_port()
    worker = setup.start("--workers", "2", "--health-port", str(port), "--health-interval", "0.5")
    await wait_health(port, 200)
    with anyio.fail_after(60):
        async with kiwi_anyio.connect(setup.url, **setup.options()) as comm:
            future = await comm.task_queue(setup.queue).task_send({"id": 0, "block": 4})
            report = await wait_health(port, 503)
            assert sorted(w["state"] for w in report["workers"]) == ["running", "unresponsive"]
            assert future is not None and (await future)["id"] == 0
            await wait_health(port, 200)
    worker.signal(signal.SIGTERM)
    assert await worker.exit_code() == 0


async def test_health_follows_the_link_to_the_broker(setup: Setup) -> None:
    port = free_port()
    health_file = setup.tmp / "health.json"
    upstream = urlsplit(setup.url)
    assert upstream.hostname is not None and upstream.port is not None
    async with run_proxy(upstream.hostname, upstream.port) as proxy:
        worker = setup.start(
            "--health-port", str(port), "--health-file", str(health_file),
            "--health-interval", "0.2", url=proxy.url(),
        )  # fmt: skip
        report = await wait_health(port, 200)
        assert report["connected"] and report["consuming"] and health_file.exists()
        assert json.loads(health_file.read_text())["status"] == "ok"
        proxy.refusing = True
        await proxy.cut()
        report = await wait_health(port, 503)
        assert report == {**report, "status": "unhealthy", "connected": False}
        with anyio.fail_after(5):
            while health_file.exists():
                await anyio.sleep(0.05)
        proxy.refusing = False
        report = await wait_health(port, 200)
        assert report["connected"] and report["consuming"]
        with anyio.fail_after(5):
            while not health_file.exists():
                await anyio.sleep(0.05)
        worker.signal(signal.SIGTERM)
        assert await worker.exit_code() == 0
    assert not health_file.exists()


async def test_systemd_is_told_ready_watchdog_and_stopping(setup: Setup) -> None:
    path = setup.tmp / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(0.5)
        messages: list[str] = []

        def receive() -> None:
            try:
                messages.extend(sock.recv(4096).decode().splitlines())
            except TimeoutError:
                pass

        async def wait_message(text: str) -> None:
            with anyio.fail_after(TIMEOUT):
                while text not in messages:
                    await anyio.to_thread.run_sync(receive)

        worker = setup.start("--workers", "2", NOTIFY_SOCKET=str(path), WATCHDOG_USEC="600000")
        await wait_message("READY=1")
        assert any(m.startswith("STATUS=ok") for m in messages)
        messages.clear()
        await wait_message("WATCHDOG=1")
        worker.signal(signal.SIGTERM)
        await wait_message("STOPPING=1")
        assert await worker.exit_code() == 0
    assert messages.count("READY=1") == 0  # once only, from the supervisor


# --------------------------------------------------------------------------- failed starts


def run_worker(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kiwi_anyio", "worker", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )


@pytest.mark.parametrize(
    ("app", "message"),
    [
        ("no_such_module:app", "cannot import 'no_such_module': no module named 'no_such_module'"),
        ("tests.worker_app:nope", "module 'tests.worker_app' has no attribute 'nope'"),
        ("tests.worker_app:QUEUE", "tests.worker_app:QUEUE is str, not a kiwi_anyio.App"),
        ("not a path", "'not a path' is not an app path: write module:attribute, e.g. tasks:app"),
    ],
)
def test_an_app_path_that_does_not_load_is_one_line_and_exit_2(app: str, message: str) -> None:
    result = run_worker(app, "--url", "amqp://guest:guest@127.0.0.1:1/")
    assert result.returncode == 2, result.stderr
    assert result.stderr == f"kiwi-anyio: error: {message}\n"


@pytest.mark.parametrize("workers", ["1", "3"])
def test_a_refused_login_is_one_line_and_exit_3(broker_url: str, workers: str) -> None:
    url = broker_url.replace("guest:guest@", "guest:s3cr3t-pw@")
    result = run_worker("tests.worker_app:make_app", "--url", url, "--workers", workers)
    assert result.returncode == 3, result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("kiwi-anyio: error:")
    assert "s3cr3t" not in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--url", "amqp://guest:guest@127.0.0.1:notaport/"], "port"),
        (["--url", "memory://x"], "memory://x is a broker inside one process"),
        (["--workers", "0"], "must be at least 1"),
    ],
)
def test_usage_errors_exit_2(args: list[str], message: str) -> None:
    result = run_worker("tests.worker_app:app", *args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr


def test_a_failing_startup_hook_exits_1_with_its_traceback_logged(broker_url: str) -> None:
    result = run_worker("tests.worker_app:broken_app", "--url", broker_url)
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "no_database" in result.stderr
    last = result.stderr.splitlines()[-1]
    assert last == (
        "kiwi-anyio: error: worker-test-broken failed: RuntimeError: the database is down"
    )


def test_rpc_subscribers_need_a_single_process(broker_url: str) -> None:
    result = run_worker("tests.worker_app:rpc_app", "--url", broker_url, "--workers", "2")
    assert result.returncode == 2
    assert "worker-test-echo" in result.stderr and "--workers 1" in result.stderr


def test_load_app_accepts_a_factory() -> None:
    from kiwi_anyio.worker import load_app
    from tests import worker_app

    assert load_app("tests.worker_app:make_app") is worker_app.app
    assert load_app("tests.worker_app") is worker_app.app

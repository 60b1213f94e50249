"""The seed programs in examples/ run as real processes against the test broker.

Each pattern runs in its synchronous form and in its async form (the async task worker runs
on trio).
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.broker

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TIMEOUT = 30.0


class Program:
    """A running example whose output lines are collected by a thread."""

    def __init__(self, script: Path | str, *args: str, url: str) -> None:
        env = dict(os.environ, KIWI_ANYIO_URL=url, PYTHONUNBUFFERED="1")
        self.name = " ".join([Path(script).name, *args[:2]])
        self.process = subprocess.Popen(
            [sys.executable, str(script), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
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

    def wait_for(self, text: str, timeout: float = TIMEOUT) -> str:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                line = self.lines.get(timeout=max(0.01, remaining))
            except queue.Empty:
                raise AssertionError(
                    f"{self.name} did not print {text!r} in {timeout} s; output: {self.seen}"
                ) from None
            self.seen.append(line)
            if text in line:
                return line
            if remaining <= 0:
                raise AssertionError(f"{self.name} did not print {text!r}; output: {self.seen}")

    def drain(self) -> list[str]:
        while True:
            try:
                self.seen.append(self.lines.get_nowait())
            except queue.Empty:
                return self.seen

    def finish(self, timeout: float = TIMEOUT) -> int:
        code = self.process.wait(timeout)
        time.sleep(0.05)
        self.drain()
        return code

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # Ctrl-C: leave the with block cleanly
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._reader.join(10)
        if self.process.stdout is not None:
            self.process.stdout.close()


@pytest.fixture
def run(broker_url: str) -> Iterator[Callable[..., Program]]:
    started: list[Program] = []

    class Tracked(Program):
        def __init__(self, script: Path, *args: str, url: str = broker_url) -> None:
            super().__init__(script, *args, url=url)
            started.append(self)

    yield Tracked
    for program in started:
        program.stop()


FORMS = ["sync", "async"]


def script(form: str, name: str) -> Path:
    return EXAMPLES / name if form == "sync" else EXAMPLES / "async" / name


@pytest.mark.parametrize("form", FORMS)
def test_two_workers_share_tasks_exactly_once(run: Callable[..., Program], form: str) -> None:
    workers = [run(script(form, "task_worker.py")) for _ in range(2)]
    for worker in workers:
        worker.wait_for("Waiting for messages")
    token = os.urandom(4).hex()
    messages = [f"{form}-{token} {i}{'.' * 2}" for i in range(8)]
    wanted = {f" [x] Received {m!r}" for m in messages}
    for message in messages:
        sender = run(script(form, "task_sender.py"), *message.split(" "))
        sender.wait_for(" [x] Sent")
        assert sender.finish() == 0
    received: list[str] = []
    deadline = time.monotonic() + TIMEOUT
    while len(received) < len(messages) and time.monotonic() < deadline:
        time.sleep(0.1)
        received = [line for worker in workers for line in worker.drain() if line in wanted]
    assert sorted(received) == sorted(wanted)  # every task exactly once
    assert all(any(line in wanted for line in w.seen) for w in workers), (
        "with prefetch_count=1 both workers take tasks"
    )


@pytest.mark.parametrize("form", FORMS)
def test_topic_receiver_gets_only_matching_subjects(run: Callable[..., Program], form: str) -> None:
    receiver = run(script(form, "topic_receiver.py"), "kern.*")
    receiver.wait_for("Waiting for logs")
    for subject, text in [("cron.info", "ignore me"), ("kern.critical", "disk full")]:
        emitter = run(script(form, "topic_emitter.py"), subject, text)
        assert emitter.finish() == 0
    receiver.wait_for("'kern.critical':'disk full'")
    time.sleep(0.5)
    assert not any("cron.info" in line for line in receiver.drain())


@pytest.mark.parametrize("form", FORMS)
def test_rpc_client_gets_fib_30(run: Callable[..., Program], form: str) -> None:
    server = run(script(form, "rpc_server.py"))
    server.wait_for("Awaiting RPC requests")
    client = run(script(form, "rpc_client.py"))
    client.wait_for(" [.] Got 832040")
    assert client.finish() == 0
    server.wait_for("fib(30)")

"""The kiwi-anyio command line, run as processes against the test broker."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator

import pytest

from tests.test_examples import Program

pytestmark = pytest.mark.broker


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
    assert "no RPC subscriber" in result.stdout


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
    assert result.returncode == 2
    assert "refused the login of user 'guest'" in result.stderr
    assert "s3cr3t-pw" not in result.stdout + result.stderr


def test_bad_url_is_a_clear_error(broker_url: str) -> None:
    result = cli("amqp://guest:s3cr3t-pw@localhost:notaport/", "ping")
    assert result.returncode == 2
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
    assert "connected to kiwi_anyio memory broker at memory://demo" in text
    assert "result: 'task 2 done'" in text
    assert "fib(30) = 832040" in text
    assert "UnroutableError" in text
    assert "kern.critical" in text and "cron.info" not in text

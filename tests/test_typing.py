"""The package is typed for its users: ``mypy --strict`` on a user's file that uses the
README's idioms passes, and finds the package (``py.typed``) from outside the repository."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

USER_CODE = """
from typing import Any

import anyio
import kiwi_anyio


async def main() -> None:
    async with kiwi_anyio.connect("memory://") as comm:
        await comm.add_task_subscriber(lambda comm, task: task * 2)
        result = await (await comm.task_send(21))
        await comm.task_send(1, no_reply=True)  # typed as None: no future to await
        future = await comm.rpc_send("inc", 41, timeout=5)
        answer: Any = await future
        await comm.broadcast_send("a car", sender="bob", subject="purchase.car")
        queue = comm.task_queue("q", max_deliveries=3, consumer_timeout=None)
        letters = await queue.dead_letters()
        print(result, answer, [letter.reason for letter in letters])


def sync() -> None:
    with kiwi_anyio.connect("amqp://localhost") as comm:
        print(comm.rpc_send("double", 21).result(timeout=5))


anyio.run(main)
"""

WRONG_CODE = """
import kiwi_anyio


async def main() -> None:
    async with kiwi_anyio.connect("memory://") as comm:
        await comm.rpc_send(1, 2, timeout="soon")
"""


def _mypy(tmp_path: Path, code: str) -> subprocess.CompletedProcess[str]:
    user = tmp_path / "user.py"
    user.write_text(textwrap.dedent(code))
    mypy = shutil.which("mypy", path=str(Path(sys.executable).parent)) or "mypy"
    return subprocess.run(
        [mypy, "--strict", "--no-incremental", str(user)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,  # outside the repository: the package is found as installed
    )


def test_a_users_code_type_checks_strictly(tmp_path: Path) -> None:
    result = _mypy(tmp_path, USER_CODE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_users_mistake_is_caught(tmp_path: Path) -> None:
    result = _mypy(tmp_path, WRONG_CODE)
    assert result.returncode == 1, result.stdout
    assert "timeout" in result.stdout and "import-not-found" not in result.stdout

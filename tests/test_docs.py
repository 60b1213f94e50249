"""The documentation matches the code: docs/api.md is current, public names are documented,
and every Python code block of the docs runs as written."""

from __future__ import annotations

import ast
import importlib.util
import inspect
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import kiwi_anyio
from kiwi_anyio.blocking import BlockingCommunicator, BlockingTaskQueue
from kiwi_anyio.protocol import Channel, Connection, Consumer, Message
from kiwi_anyio.testing.rabbitmq import RabbitMQBroker

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _gen_api() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_api", DOCS / "gen_api.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_api_reference_is_current() -> None:
    rendered = _gen_api().render()
    assert (DOCS / "api.md").read_text() == rendered, (
        "docs/api.md is out of date: run `python docs/gen_api.py`"
    )


def test_every_public_name_has_a_docstring() -> None:
    missing = []
    for name in kiwi_anyio.__all__:
        obj = getattr(kiwi_anyio, name)
        if (inspect.isclass(obj) or callable(obj)) and not inspect.getdoc(obj):
            missing.append(name)
    classes = [
        kiwi_anyio.Communicator,
        kiwi_anyio.TaskQueue,
        kiwi_anyio.IncomingTask,
        kiwi_anyio.Future,
        kiwi_anyio.BroadcastFilter,
        BlockingCommunicator,
        BlockingTaskQueue,
        Connection,
        Channel,
        Consumer,
        Message,
    ]
    for cls in classes:
        for member, value in vars(cls).items():
            if member.startswith("_"):
                continue
            target = value.fget if isinstance(value, property) else value
            if inspect.isfunction(target) and not inspect.getdoc(target):
                missing.append(f"{cls.__name__}.{member}")
    assert missing == []


# --------------------------------------------------------------------------- the docs' code runs
#
# Every ```python block of the pages below runs as written, in page order, as its own process:
#
# * `<!-- not-run: reason -->` right before a block skips it (the reason is the test's record);
# * `<!-- background -->` starts it as a background process (a worker, a server) that must still
#   be running when the page's last block has run; it is then stopped with Ctrl-C;
# * `anyio.run(main)` runs on each backend in turn (the page runs once per backend); a block with
#   `await` at top level is a fragment and runs inside `async def` the same way;
# * broker URLs (`amqp://localhost`, `amqp://guest:guest@localhost/`, …) and
#   `KIWI_ANYIO_URL` point at a fresh virtual host of the test broker;
# * a `# prints: TEXT` comment is checked: TEXT must be in the block's output.

ROOT = DOCS.parent
#: api.md is generated from the docstrings.
CODE_PAGES = [ROOT / "README.md", *sorted(p for p in DOCS.glob("*.md") if p.name != "api.md")]
BLOCK_TIMEOUT = 60
BACKGROUND_START = 3.0  # seconds a background block gets to subscribe before the next block

_FENCE = re.compile(r"^```(\w*)\s*$")
_MARK = re.compile(r"^<!--\s*(not-run|background)\s*(?::\s*(.*?))?\s*-->$")
_URL = re.compile(r"amqp://(?:guest:guest@)?(?:localhost|127\.0\.0\.1)(?::5672)?/?")
_RUN = re.compile(r"anyio\.run\((\w+)\)")
_PRINTS = re.compile(r"#\s*prints:\s*(.+?)\s*$", re.M)


@dataclass
class CodeBlock:
    path: Path
    line: int  # of the opening fence
    code: str
    mark: str | None = None  # "not-run" or "background"
    reason: str = ""

    @property
    def where(self) -> str:
        return f"{self.path.name}:{self.line}"

    @property
    def is_async(self) -> bool:
        return bool(_RUN.search(self.code)) or _top_level_await(self.code)


def _top_level_await(code: str) -> bool:
    try:
        compiled = compile(code, "<doc>", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    except SyntaxError:
        return False
    return bool(compiled.co_flags & inspect.CO_COROUTINE)


def code_blocks(path: Path) -> list[CodeBlock]:
    """The ```python blocks of a Markdown page, with the mark of the comment before each."""
    blocks: list[CodeBlock] = []
    lines = path.read_text().splitlines()
    mark: tuple[str, str] | None = None
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        found = _MARK.match(line)
        fence = _FENCE.match(line)
        if found:
            mark = (found.group(1), found.group(2) or "")
        elif fence:
            end = i + 1
            while end < len(lines) and lines[end].strip() != "```":
                end += 1
            if fence.group(1) == "python":
                kind, reason = mark or (None, "")
                blocks.append(CodeBlock(path, i + 1, "\n".join(lines[i + 1 : end]), kind, reason))
            mark = None
            i = end
        elif line:
            mark = None
        i += 1
    return blocks


def program(block: CodeBlock, backend: str, url: str) -> str:
    """The block as a program: the test broker's URL, the backend, fragments wrapped."""
    code = _URL.sub(url, block.code)
    if _RUN.search(code):
        return _RUN.sub(lambda m: f"anyio.run({m.group(1)}, backend={backend!r})", code)
    if _top_level_await(code):
        body = textwrap.indent(code, "    ")
        run = f"anyio.run(_main, backend={backend!r})"
        return f"import anyio\n\n\nasync def _main():\n{body}\n\n\n{run}\n"
    return code


def test_the_markers_are_understood(tmp_path: Path) -> None:
    page = [
        "<!-- not-run: a fragment -->",
        "```python",
        "x = 1",
        "```",
        "<!-- background -->",
        "",
        "```python",
        "async with kiwi_anyio.connect('amqp://localhost') as comm:",
        "    pass",
        "```",
        "<!-- not-run: only for the next block -->",
        "text",
        "```python",
        "anyio.run(main)  # prints: ok",
        "```",
        "```bash",
        "ignored",
        "```",
    ]
    path = tmp_path / "page.md"
    path.write_text("\n".join(page) + "\n")
    blocks = code_blocks(path)
    assert [(b.line, b.mark, b.reason) for b in blocks] == [
        (2, "not-run", "a fragment"),
        (7, "background", ""),
        (13, None, ""),
    ]
    assert not blocks[0].is_async and blocks[1].is_async and blocks[2].is_async
    wrapped = program(blocks[1], "trio", "amqp://guest:guest@127.0.0.1:1234/vh")
    assert "connect('amqp://guest:guest@127.0.0.1:1234/vh')" in wrapped
    assert wrapped.endswith("anyio.run(_main, backend='trio')\n")
    assert program(blocks[2], "trio", "x") == "anyio.run(main, backend='trio')  # prints: ok"


@pytest.fixture(scope="session")
def docs_url(broker: RabbitMQBroker, broker_url: str) -> Iterator[str]:
    """A virtual host of its own on the test broker: the docs' queues meet no other test's."""
    vhost = f"docs-{uuid.uuid4().hex[:8]}"
    broker.ctl("add_vhost", vhost)
    broker.ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    yield broker_url.rstrip("/") + "/" + vhost
    broker.ctl("delete_vhost", vhost)


def _pages() -> list[Any]:
    params = []
    for path in CODE_PAGES:
        blocks = code_blocks(path)
        if not blocks:
            continue
        backends = ["asyncio", "trio"] if any(b.is_async for b in blocks) else ["asyncio"]
        params += [pytest.param(path, backend, id=f"{path.name}-{backend}") for backend in backends]
    return params


def _run_env(url: str) -> dict[str, str]:
    return dict(os.environ, KIWI_ANYIO_URL=url, PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT))


@pytest.mark.broker
@pytest.mark.parametrize(("path", "backend"), _pages())
def test_the_code_blocks_of_a_page_run_as_written(
    path: Path, backend: str, docs_url: str, tmp_path: Path
) -> None:
    background: list[tuple[CodeBlock, subprocess.Popen[str]]] = []
    env = _run_env(docs_url)
    try:
        for block in code_blocks(path):
            if block.mark == "not-run":
                assert block.reason, f"{block.where}: say why it is not run"
                continue
            code = program(block, backend, docs_url)
            if block.mark == "background":
                log = tmp_path / f"{block.line}.log"
                with log.open("w") as out:
                    process = subprocess.Popen(
                        [sys.executable, "-c", code],
                        cwd=tmp_path,
                        env=env,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        text=True,
                    )
                background.append((block, process))
                time.sleep(BACKGROUND_START)
                assert process.poll() is None, f"{block.where} ended: {log.read_text()}"
                continue
            result = subprocess.run(
                [sys.executable, "-c", code],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=BLOCK_TIMEOUT,
            )
            assert result.returncode == 0, f"{block.where} failed:\n{result.stderr}"
            for expected in _PRINTS.findall(block.code):
                assert expected in result.stdout, f"{block.where} did not print {expected!r}"
        for block, process in background:
            log = tmp_path / f"{block.line}.log"
            assert process.poll() is None, f"{block.where} ended: {log.read_text()}"
    finally:
        for _, process in background:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()

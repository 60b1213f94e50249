"""The documentation matches the code: docs/api.md is current, public names are documented."""

from __future__ import annotations

import importlib.util
import inspect
from pathlib import Path
from types import ModuleType

import kiwi_anyio
from kiwi_anyio.blocking import BlockingCommunicator, BlockingTaskQueue
from kiwi_anyio.protocol import Channel, Connection, Consumer, Message

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

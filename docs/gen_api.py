"""Generate docs/api.md from the docstrings of kiwi_anyio's public API.

Run ``python docs/gen_api.py`` after changing a public docstring; ``tests/test_docs.py``
fails while docs/api.md is out of date.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import kiwi_anyio
import kiwi_anyio.blocking
import kiwi_anyio.codecs
import kiwi_anyio.memory
import kiwi_anyio.protocol
import kiwi_anyio.testing.pytest_plugin

OUT = Path(__file__).resolve().parent / "api.md"

SECTIONS: list[tuple[str, ModuleType, list[str]]] = [
    ("kiwi_anyio", kiwi_anyio, [n for n in kiwi_anyio.__all__ if n != "codecs"]),
    (
        "kiwi_anyio.blocking",
        kiwi_anyio.blocking,
        ["BlockingCommunicator", "BlockingTaskQueue", "BlockingIncomingTask"],
    ),
    (
        "kiwi_anyio.codecs",
        kiwi_anyio.codecs,
        [
            "Codec",
            "YAML",
            "JSON",
            "MSGPACK",
            "UNSAFE_PYTHON_YAML",
            "codec_from_functions",
            "decoder_for",
        ],
    ),
    ("kiwi_anyio.memory", kiwi_anyio.memory, ["connect", "reset", "reset_all"]),
    (
        "kiwi_anyio.protocol",
        kiwi_anyio.protocol,
        [
            "connect",
            "Connection",
            "Channel",
            "Consumer",
            "Message",
            "ConnectionParameters",
            "parse_url",
            "AMQPConnection",
        ],
    ),
    (
        "kiwi_anyio.testing.pytest_plugin",
        kiwi_anyio.testing.pytest_plugin,
        ["kiwi_url", "kiwi_communicator", "kiwi_blocking_communicator"],
    ),
]


def _doc(obj: Any) -> str:
    return inspect.cleandoc(obj.__doc__ or "").strip()


def _signature(obj: Any) -> str:
    try:
        return str(inspect.signature(obj))
    except (TypeError, ValueError):
        return ""


def _members(cls: type) -> list[tuple[str, Any]]:
    members = []
    for name, value in cls.__dict__.items():
        if name.startswith("_") and name not in ("__aenter__", "__enter__"):
            continue
        if isinstance(value, property | staticmethod | classmethod) or inspect.isfunction(value):
            members.append((name, value))
    return members


def render() -> str:
    lines = [
        "# API reference",
        "",
        "Generated from the docstrings by `python docs/gen_api.py`; do not edit by hand.",
        "",
    ]
    for title, module, names in SECTIONS:
        lines += [f"## `{title}`", "", _doc(module), ""]
        for name in names:
            obj = getattr(module, name)
            if inspect.isclass(obj):
                if issubclass(obj, BaseException):
                    lines += [f"### exception `{name}`", "", _doc(obj), ""]
                    continue
                lines += [f"### class `{name}{_signature(obj)}`", "", _doc(obj), ""]
                for member_name, member in _members(obj):
                    target = member.fget if isinstance(member, property) else member
                    target = getattr(target, "__func__", target)
                    kind = "property" if isinstance(member, property) else "method"
                    sig = "" if kind == "property" else _signature(target)
                    doc = _doc(target)
                    if not doc:
                        continue
                    lines += [f"#### {kind} `{name}.{member_name}{sig}`", "", doc, ""]
            elif callable(obj):
                target = getattr(obj, "__wrapped__", obj)
                lines += [f"### `{name}{_signature(target)}`", "", _doc(target), ""]
            else:
                lines += [f"### `{name}`", "", f"`{obj!r}`" if len(repr(obj)) < 100 else "", ""]
    return "\n".join(lines).rstrip() + "\n"


def main() -> int:
    OUT.write_text(render())
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

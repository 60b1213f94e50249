"""Generate docs/api.md from the docstrings of kiwi_anyio's public API.

Run ``python docs/gen_api.py`` after changing a public docstring; ``tests/test_docs.py``
fails while docs/api.md is out of date.
"""

from __future__ import annotations

import ast
import enum
import inspect
import re
import sys
import textwrap
from pathlib import Path
from types import ModuleType
from typing import Any

import kiwi_anyio
import kiwi_anyio.blocking
import kiwi_anyio.channel
import kiwi_anyio.codecs
import kiwi_anyio.hooks
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
    (
        "kiwi_anyio.channel",
        kiwi_anyio.channel,
        ["Connection", "ChannelOpener", "Channel", "Consumer", "Message"],
    ),
    ("kiwi_anyio.hooks", kiwi_anyio.hooks, ["Hooks", "Outgoing"]),
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


# --------------------------------------------------------------------------- RST to Markdown

_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|data|attr|exc|obj|const):`~?([^`]+)`")
_LITERAL = re.compile(r"``(.+?)``")
_SECTION = re.compile(
    r"^(Args|Arguments|Parameters|Attributes|Raises|Returns|Yields|Keyword Args|Example|"
    r"Examples|Note|Notes|Warning|Warnings|See Also):$"
)
#: sections whose entries are ``name: text``
_ENTRY_SECTIONS = {"Args", "Arguments", "Parameters", "Attributes", "Raises", "Keyword Args"}
_ENTRY = re.compile(r"^(\*{0,2}[\w.\[\], |]+?|\*{1,2}):\s*(.*)$")


def _role(match: re.Match[str]) -> str:
    target = match.group(1)
    if ":`~" in match.group(0):  # :class:`~a.b.C` shows as C
        target = target.rsplit(".", 1)[-1]
    return f"`{target}`"


def _inline(text: str) -> str:
    """Inline RST: roles and double-backtick literals become Markdown code spans."""
    text = _ROLE.sub(_role, text)
    return _LITERAL.sub(lambda m: f"`{m.group(1)}`", text)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _language(code: str) -> str:
    """``python`` if the block parses as Python (top-level ``await`` allowed), else ``text``."""
    try:
        ast.parse(code)
    except SyntaxError:
        try:
            ast.parse("async def _():\n" + textwrap.indent(code, "    "))
        except SyntaxError:
            return "text"
    return "python"


def _block(lines: list[str], start: int, base: int) -> tuple[list[str], int]:
    """The lines from ``start`` indented deeper than ``base`` (blank lines included, trailing
    ones dropped); and the index after them."""
    end = start
    while end < len(lines) and (not lines[end].strip() or _indent(lines[end]) > base):
        end += 1
    block = lines[start:end]
    while block and not block[-1].strip():
        block.pop()
        end -= 1 if end > start and not lines[end - 1].strip() else 0
    return block, end


def _fence(block: list[str]) -> list[str]:
    code = textwrap.dedent("\n".join(block)).strip("\n")
    return [f"```{_language(code)}", *code.splitlines(), "```"]


def _section(name: str, block: list[str]) -> list[str]:
    body = textwrap.dedent("\n".join(block)).splitlines()
    out = [f"**{name}:**", ""]
    if name not in _ENTRY_SECTIONS:
        return [*out, *_markdown(body), ""]
    entries: list[list[str]] = []
    for line in body:
        if not line.strip():
            continue
        if _indent(line) == 0 or not entries:
            entries.append([line.strip()])
        else:
            entries[-1].append(line.strip())
    for entry in entries:
        text = " ".join(entry)
        match = _ENTRY.match(text)
        if match and " " not in match.group(1).strip("*").replace(", ", ","):
            out.append(f"- `{match.group(1)}`: {_inline(match.group(2))}")
        else:
            out.append(f"- {_inline(text)}")
    return [*out, ""]


def _markdown(lines: list[str]) -> list[str]:
    """Google-style RST docstring lines (dedented) as Markdown lines."""
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        section = _SECTION.match(stripped)
        if section and _indent(line) == 0 and i + 1 < len(lines):
            block, i = _block(lines, i + 1, 0)
            if block:
                if out and out[-1]:
                    out.append("")
                out += _section(section.group(1), block)
                continue
        if stripped.endswith("::") and not stripped.startswith(".."):
            text = stripped[:-2].rstrip()
            if text:
                out.append(" " * _indent(line) + _inline(text) + ":")
            block, i = _block(lines, i + 1, _indent(line))
            if block:
                if out and out[-1]:
                    out.append("")
                out += [*_fence(block), ""]
            continue
        out.append(_inline(line))
        i += 1
    while out and not out[-1]:
        out.pop()
    return out


def _squeeze(lines: list[str]) -> list[str]:
    """No two blank lines in a row outside code fences."""
    out: list[str] = []
    fenced = False
    for line in lines:
        if line.startswith("```"):
            fenced = not fenced
        if not fenced and not line.strip() and out and not out[-1].strip():
            continue
        out.append(line)
    return out


def _doc(obj: Any) -> str:
    """``obj``'s docstring, in Markdown."""
    text = inspect.cleandoc(obj.__doc__ or "").strip()
    # ``literals``, also those broken across lines (Markdown code spans may span lines too)
    parts = text.split("``")
    if len(parts) % 2:
        text = "".join(f"`{part}`" if i % 2 else part for i, part in enumerate(parts))
    return "\n".join(_squeeze(_markdown(text.splitlines()))) if text else ""


class _Annotation:
    """A string annotation (``from __future__ import annotations``) shown unquoted."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def _signature(obj: Any) -> str:
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return ""

    def unquote(annotation: Any) -> Any:
        return _Annotation(annotation) if isinstance(annotation, str) else annotation

    def default(value: Any) -> Any:  # an enum sentinel shows as its name, not its repr
        return _Annotation(value.name) if isinstance(value, enum.Enum) else value

    params = [
        p.replace(annotation=unquote(p.annotation), default=default(p.default))
        for p in sig.parameters.values()
    ]
    return str(sig.replace(parameters=params, return_annotation=unquote(sig.return_annotation)))


def _members(cls: type) -> list[tuple[str, Any]]:
    members = []
    for name, value in cls.__dict__.items():
        if name.startswith("_") and name not in ("__aenter__", "__enter__"):
            continue
        if isinstance(value, property | staticmethod | classmethod) or inspect.isfunction(value):
            members.append((name, value))
    return members


def _describe_value(obj: Any) -> str:
    """A short line for a module-level value: its repr, or its type and content type."""
    if len(repr(obj)) < 100:
        return f"`{obj!r}`"
    text = f"A `{type(obj).__name__}`"
    content_type = getattr(obj, "content_type", None)
    if content_type:
        text += f" for content type `{content_type}`"
    if getattr(obj, "unsafe", False):
        text += " (unsafe: decoding may run code chosen by the sender)"
    return text + "."


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
                lines += [f"### `{name}`", "", _describe_value(obj), ""]
    return "\n".join(lines).rstrip() + "\n"


def main() -> int:
    OUT.write_text(render())
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Telling a pydantic model or a msgspec ``Struct`` apart without importing either library.

A class can only be a pydantic model (a msgspec ``Struct``) if pydantic (msgspec) is already
imported, so the checks look in ``sys.modules``; the base class is kept once found.

Owns: finding ``pydantic.BaseModel`` (v2 only) and ``msgspec.Struct``. Must not touch: the
conversions themselves (``_plain.py``, ``_convert.py``); it never imports either library.
"""

from __future__ import annotations

import sys
from typing import Any

_bases: dict[str, type[Any]] = {}  # "pydantic"/"msgspec" -> BaseModel/Struct, once imported


def pydantic_model() -> type[Any] | None:
    """``pydantic.BaseModel`` (v2) if pydantic is imported (nobody can have a model otherwise)."""
    base = _bases.get("pydantic")
    if base is None:
        module = sys.modules.get("pydantic")
        found = getattr(module, "BaseModel", None) if module is not None else None
        if not (isinstance(found, type) and hasattr(found, "model_validate")):  # v1: no
            return None
        base = _bases["pydantic"] = found
    return base


def msgspec_struct() -> type[Any] | None:
    """``msgspec.Struct`` if msgspec is imported."""
    base = _bases.get("msgspec")
    if base is None:
        module = sys.modules.get("msgspec")
        found = getattr(module, "Struct", None) if module is not None else None
        if not isinstance(found, type):
            return None
        base = _bases["msgspec"] = found
    return base


def is_pydantic_model(tp: Any) -> bool:
    """True for a subclass of ``pydantic.BaseModel`` (v2)."""
    base = pydantic_model()
    return base is not None and isinstance(tp, type) and issubclass(tp, base)


def is_msgspec_struct(tp: Any) -> bool:
    """True for a subclass of ``msgspec.Struct``."""
    base = msgspec_struct()
    return base is not None and isinstance(tp, type) and issubclass(tp, base)

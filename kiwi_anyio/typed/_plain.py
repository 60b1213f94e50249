"""Typed values to plain data: what every body sent passes (:func:`to_plain`), and what a typed
subscriber's result becomes (:func:`deep_plain`).

Owns: turning a pydantic model, a msgspec ``Struct`` or a dataclass (and, inside those, enums,
datetimes, UUIDs, decimals, sets) into data the codecs encode. Must not touch: validation of
incoming bodies (``_convert.py``), the wire format, the codecs: the result is plain data that
any kiwiPy peer reads.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import sys
import uuid
from typing import Any, Final

from ._optional import msgspec_struct, pydantic_model

#: plain values that contain nothing
_SCALARS: Final[frozenset[type]] = frozenset({str, int, float, bool, type(None), bytes})
#: types that are plain data as they are (containers are not searched for models)
_PLAIN: Final[frozenset[type]] = frozenset(
    {str, int, float, bool, type(None), bytes, dict, list, tuple}
)
#: dataclass -> its field names (``dataclasses.fields`` is slow per call)
_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def to_plain(value: Any) -> Any:
    """A body ready for the codec: a model as plain data, anything else unchanged.

    * a pydantic model: ``model.model_dump(mode="json")``;
    * a msgspec ``Struct``: ``msgspec.to_builtins(value)``;
    * a dataclass instance: a dict of its fields, converted recursively (nested models,
      lists, dicts; enums become their values; datetimes, dates, times, UUIDs and decimals
      become strings, as pydantic's JSON mode does; bytes stay bytes).

    Plain values (``str``, ``int``, ``float``, ``bool``, ``None``, ``bytes``, ``dict``,
    ``list``, ``tuple``) are returned as they are after one type check: a container is not
    searched for models, so send a model itself, not a list of them.
    """
    if type(value) in _PLAIN:
        return value
    return _model_to_plain(value, deep=False)


def _model_to_plain(value: Any, *, deep: bool) -> Any:
    base = pydantic_model()
    if base is not None and isinstance(value, base):
        return value.model_dump(mode="json")
    base = msgspec_struct()
    if base is not None and isinstance(value, base):
        return sys.modules["msgspec"].to_builtins(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        names = _FIELD_NAMES.get(type(value))
        if names is None:
            names = _FIELD_NAMES[type(value)] = tuple(f.name for f in dataclasses.fields(value))
        result = {}
        for name in names:
            item = getattr(value, name)
            result[name] = item if type(item) in _SCALARS else deep_plain(item)
        return result
    if not deep:
        return value
    if isinstance(value, enum.Enum):
        return deep_plain(value.value)
    if isinstance(value, datetime.date | datetime.time):  # datetime is a date
        return value.isoformat()
    if isinstance(value, uuid.UUID | decimal.Decimal):
        return str(value)
    if isinstance(value, set | frozenset):
        return [deep_plain(item) for item in value]
    return value


def deep_plain(value: Any) -> Any:
    """Inside a dataclass (and for a typed subscriber's result): containers are searched,
    special values become plain."""
    kind = type(value)
    if kind in _SCALARS:
        return value
    if isinstance(value, dict):
        scalars = _SCALARS
        return {
            k if type(k) in scalars else deep_plain(k): v if type(v) in scalars else deep_plain(v)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [item if type(item) in _SCALARS else deep_plain(item) for item in value]
    return _model_to_plain(value, deep=True)

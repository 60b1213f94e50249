"""Plain data to typed values: the converter compiled once per typed subscriber, and run on
every body it receives.

:func:`body_converter` compiles an annotation (a pydantic model, a msgspec ``Struct``, a
dataclass or a ``TypedDict``, or ``X | None`` of one) into ``convert(body)``, which returns the
typed value or raises :class:`~kiwi_anyio.InvalidMessage` naming the fields that failed.
pydantic models and msgspec ``Struct`` s are validated by their own library; dataclasses and
``TypedDict`` s (and what their fields hold: scalars, containers, unions, literals, enums,
datetimes, UUIDs, decimals) by the converters here, which accept what JSON makes of a value.

Owns: validating and converting incoming bodies, and the text of their ``InvalidMessage``.
Must not touch: subscribers (``_subscribers.py``), outgoing bodies (``_plain.py``), the wire.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import decimal
import enum
import sys
import types
import typing
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Final, Literal

from ..exceptions import InvalidMessage
from ._optional import is_msgspec_struct, is_pydantic_model

_MAX_ERRORS: Final = 10  # failing fields named in an InvalidMessage
_MAX_REPR: Final = 40


class _Invalid(Exception):
    """Internal: ``(location, problem)`` pairs found while converting a body."""

    def __init__(self, errors: list[tuple[str, str]]) -> None:
        super().__init__(errors)
        self.errors = errors


#: ``convert(value, location) -> converted``; raises _Invalid
_Converter = Callable[[Any, str], Any]


def _join(location: str, key: object) -> str:
    return f"{location}.{key}" if location else str(key)


def _short_repr(value: Any) -> str:
    try:
        text = repr(value)
    except Exception:  # a hostile __repr__ must not hide the real problem
        text = f"<{type(value).__name__}>"
    return text if len(text) <= _MAX_REPR else text[: _MAX_REPR - 3] + "..."


def _type_name(tp: Any) -> str:
    return tp.__name__ if isinstance(tp, type) else str(tp).replace("typing.", "")


def _fail(location: str, problem: str) -> typing.NoReturn:
    raise _Invalid([(location, problem)])


def _expected(tp: Any, value: Any, location: str) -> typing.NoReturn:
    _fail(location, f"expected {_type_name(tp)}, got {type(value).__name__} {_short_repr(value)}")


def _invalid_message(type_name: str, errors: list[tuple[str, str]]) -> InvalidMessage:
    shown = [f"{loc}: {problem}" if loc else problem for loc, problem in errors[:_MAX_ERRORS]]
    if len(errors) > _MAX_ERRORS:
        shown.append(f"... and {len(errors) - _MAX_ERRORS} more")
    return InvalidMessage(f"invalid {type_name}: " + "; ".join(shown), errors=tuple(errors))


def _pydantic_converter(model: type[Any]) -> _Converter:
    validation_error: type[Exception] = sys.modules["pydantic"].ValidationError

    def convert(value: Any, location: str) -> Any:
        try:
            return model.model_validate(value)
        except validation_error as exc:
            errors = []
            for error in exc.errors():  # type: ignore[attr-defined]
                where = location
                for part in error.get("loc", ()):
                    where = _join(where, part)
                problem = str(error.get("msg", "invalid"))
                if "input" in error and error.get("type") != "missing":
                    problem += f" (got {_short_repr(error['input'])})"
                errors.append((where, problem))
            raise _Invalid(errors or [(location, str(exc))])

    return convert


def _msgspec_converter(struct: type[Any]) -> _Converter:
    msgspec = sys.modules["msgspec"]
    try:  # msgspec resolves annotations on first use: fail at subscription, not per message
        msgspec.json.Decoder(struct)
    except Exception as exc:
        raise TypeError(f"cannot resolve the annotations of {struct.__qualname__}: {exc}") from exc
    msgspec_convert = msgspec.convert
    validation_error: type[Exception] = msgspec.ValidationError

    def convert(value: Any, location: str) -> Any:
        try:
            return msgspec_convert(value, type=struct, strict=False)
        except validation_error as exc:
            # "Expected `int`, got `str` - at `$.items[0].quantity`"
            text = str(exc)
            problem, at, path = text.rpartition(" - at `")
            if not at:
                raise _Invalid([(location, text)])
            path = path.rstrip("`").removeprefix("$").removeprefix(".")
            where = _join(location, path) if path else location
            raise _Invalid([(where, problem)])

    return convert


def _record_converter(cls: type[Any], memo: dict[Any, _Converter]) -> _Converter:
    """A dataclass (built with its fields as keyword arguments) or a ``TypedDict`` (a dict):
    a mapping whose keys are checked one by one, every failing key named."""
    fields: list[tuple[str, bool, _Converter | None]] = []  # name, required, convert
    is_dataclass = dataclasses.is_dataclass(cls)

    def convert(value: Any, location: str) -> Any:
        if not isinstance(value, Mapping):
            _expected(cls, value, location)
        result: dict[str, Any] = {}
        errors: list[tuple[str, str]] = []
        for name, required, field_convert in fields:
            if name not in value:
                if required:
                    errors.append((_join(location, name), "field required"))
                continue
            item = value[name]
            if field_convert is None:
                result[name] = item
                continue
            try:
                result[name] = field_convert(item, _join(location, name))
            except _Invalid as exc:
                errors += exc.errors
        if errors:
            raise _Invalid(errors)
        if not is_dataclass:
            return result
        try:
            return cls(**result)
        except (TypeError, ValueError) as exc:  # __post_init__ checks
            _fail(location, str(exc) or type(exc).__name__)

    memo[cls] = convert  # before the fields: a dataclass may contain itself
    declared = _dataclass_fields(cls) if is_dataclass else _typeddict_keys(cls)
    fields.extend((name, required, _compile(hint, memo)) for name, required, hint in declared)
    return convert


def _dataclass_fields(cls: type[Any]) -> Iterator[tuple[str, bool, Any]]:
    """``(name, required, annotation)`` of the fields ``__init__`` takes."""
    hints = _type_hints(cls)
    for field in dataclasses.fields(cls):
        if field.init:
            required = (
                field.default is dataclasses.MISSING
                and field.default_factory is dataclasses.MISSING
            )
            yield field.name, required, hints.get(field.name, Any)


def _typeddict_keys(cls: type[Any]) -> Iterator[tuple[str, bool, Any]]:
    """``(name, required, annotation)`` of the keys."""
    required_keys: frozenset[str] = getattr(cls, "__required_keys__", frozenset())
    for name, hint in _type_hints(cls, extras=True).items():
        # with string annotations Python 3.11 cannot see NotRequired[...] in __required_keys__
        required = name in required_keys
        origin = typing.get_origin(hint)
        if origin is typing.NotRequired or origin is typing.Required:
            required = origin is typing.Required
            hint = typing.get_args(hint)[0]
        yield name, required, hint


def _type_hints(cls: type[Any], *, extras: bool = False) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls, include_extras=extras)
    except Exception as exc:
        raise TypeError(f"cannot resolve the annotations of {cls.__qualname__}: {exc}") from exc


def _scalar_converter(tp: type[Any]) -> _Converter | None:
    """Plain classes: an isinstance check, and the conversions JSON makes necessary."""
    if tp is bool:

        def check_bool(value: Any, location: str) -> Any:
            if type(value) is not bool:
                _expected(tp, value, location)
            return value

        return check_bool
    if tp is int:

        def check_int(value: Any, location: str) -> Any:
            if not isinstance(value, int) or isinstance(value, bool):
                _expected(tp, value, location)
            return value

        return check_int
    if tp is float:

        def check_float(value: Any, location: str) -> Any:
            if not isinstance(value, int | float) or isinstance(value, bool):
                _expected(tp, value, location)
            return float(value)

        return check_float
    if tp is bytes:

        def check_bytes(value: Any, location: str) -> Any:
            if isinstance(value, bytes):
                return value
            if isinstance(value, str):  # what to_plain's JSON-minded peers send
                try:
                    return base64.b64decode(value, validate=True)
                except ValueError:
                    pass
            _expected(tp, value, location)

        return check_bytes
    parse = _PARSERS.get(tp)
    if parse is not None or (isinstance(tp, type) and issubclass(tp, enum.Enum)):
        parser: Callable[[Any], Any] = parse or tp

        def check_parsed(value: Any, location: str) -> Any:
            if type(value) is tp:
                return value
            if tp is datetime.date and isinstance(value, datetime.datetime):
                _expected(tp, value, location)
            try:
                return parser(value)
            except (TypeError, ValueError, ArithmeticError):
                _expected(tp, value, location)

        return check_parsed

    def check_instance(value: Any, location: str) -> Any:
        if not isinstance(value, tp):
            _expected(tp, value, location)
        return value

    return check_instance


def _parse_datetime(value: Any) -> datetime.datetime:
    if isinstance(value, str):
        return datetime.datetime.fromisoformat(value)
    raise TypeError


def _parse_date(value: Any) -> datetime.date:
    if isinstance(value, str):
        return datetime.date.fromisoformat(value)
    if isinstance(value, datetime.date) and not isinstance(value, datetime.datetime):
        return value
    raise TypeError


def _parse_time(value: Any) -> datetime.time:
    if isinstance(value, str):
        return datetime.time.fromisoformat(value)
    raise TypeError


def _parse_uuid(value: Any) -> uuid.UUID:
    if isinstance(value, str):
        return uuid.UUID(value)
    raise TypeError


def _parse_decimal(value: Any) -> decimal.Decimal:
    if isinstance(value, str | int) and not isinstance(value, bool):
        return decimal.Decimal(value)
    if isinstance(value, float):
        return decimal.Decimal(str(value))
    raise TypeError


_PARSERS: Final[dict[type, Callable[[Any], Any]]] = {
    datetime.datetime: _parse_datetime,
    datetime.date: _parse_date,
    datetime.time: _parse_time,
    uuid.UUID: _parse_uuid,
    decimal.Decimal: _parse_decimal,
}


def _sequence_converter(
    origin: type[Any], args: tuple[Any, ...], memo: dict[Any, _Converter]
) -> _Converter:
    if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
        items = [_compile(arg, memo) for arg in args]

        def convert_fixed(value: Any, location: str) -> Any:
            if not isinstance(value, list | tuple) or len(value) != len(items):
                _fail(
                    location, f"expected a sequence of {len(items)} items, got {_short_repr(value)}"
                )
            return tuple(_convert_items(value, items, location))

        return convert_fixed
    item = _compile(args[0], memo) if args else None
    build: Callable[[Iterable[Any]], Any] = origin if origin in (set, frozenset, tuple) else list
    accepted = (list, tuple, set, frozenset) if origin in (set, frozenset) else (list, tuple)

    def convert(value: Any, location: str) -> Any:
        if not isinstance(value, accepted):
            _expected(origin, value, location)
        if item is None:
            return value if type(value) is origin else build(value)
        return build(_convert_items(value, [item] * len(value), location))

    return convert


def _convert_items(
    values: Iterable[Any], converters: list[_Converter | None], location: str
) -> list[Any]:
    result = []
    errors: list[tuple[str, str]] = []
    for index, (value, convert) in enumerate(zip(values, converters, strict=False)):
        if convert is None:
            result.append(value)
            continue
        try:
            result.append(convert(value, f"{location}[{index}]"))
        except _Invalid as exc:
            errors += exc.errors
    if errors:
        raise _Invalid(errors)
    return result


def _mapping_converter(args: tuple[Any, ...], memo: dict[Any, _Converter]) -> _Converter:
    key_convert = _compile(args[0], memo) if args else None
    value_convert = _compile(args[1], memo) if len(args) > 1 else None

    def convert(value: Any, location: str) -> Any:
        if not isinstance(value, Mapping):
            _expected(dict, value, location)
        if key_convert is None and value_convert is None:
            return value if type(value) is dict else dict(value)
        result = {}
        errors: list[tuple[str, str]] = []
        for key, item in value.items():
            where = _join(location, key)
            try:
                k = key if key_convert is None else key_convert(key, where)
                result[k] = item if value_convert is None else value_convert(item, where)
            except _Invalid as exc:
                errors += exc.errors
        if errors:
            raise _Invalid(errors)
        return result

    return convert


def _union_converter(args: tuple[Any, ...], memo: dict[Any, _Converter]) -> _Converter | None:
    options = [_compile(arg, memo) for arg in args if arg is not type(None)]
    allows_none = type(None) in args
    if any(option is None for option in options):
        return None  # one of them accepts anything
    described = " | ".join(_type_name(arg) for arg in args)

    def convert(value: Any, location: str) -> Any:
        if value is None and allows_none:
            return None
        first: _Invalid | None = None
        for option in options:
            assert option is not None
            try:
                return option(value, location)
            except _Invalid as exc:
                first = first or exc
        if len(options) == 1 and first is not None:
            raise first
        _fail(location, f"expected {described}, got {type(value).__name__} {_short_repr(value)}")

    return convert


def _compile(tp: Any, memo: dict[Any, _Converter]) -> _Converter | None:
    """The converter of values annotated ``tp``; ``None`` for "accept as it is"."""
    if tp is Any or tp is object:
        return None
    try:
        known = memo.get(tp)
    except TypeError:  # an unhashable annotation
        known = None
    if known is not None:
        return known
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Annotated:
        return _compile(args[0], memo)
    if origin is typing.Union or origin is types.UnionType:
        return _union_converter(args, memo)
    if origin is Literal:

        def check_literal(value: Any, location: str) -> Any:
            for allowed in args:
                if value == allowed and type(value) is type(allowed):
                    return value
            _fail(location, f"expected one of {list(args)!r}, got {_short_repr(value)}")

        return check_literal
    if origin in (list, set, frozenset, tuple) or origin in (
        typing.get_origin(typing.Sequence[Any]),
        typing.get_origin(typing.AbstractSet[Any]),
    ):
        if origin not in (list, set, frozenset, tuple):
            origin = list if origin is not typing.get_origin(typing.AbstractSet[Any]) else set
        return _sequence_converter(origin, args, memo)
    if origin in (dict, typing.get_origin(typing.Mapping[Any, Any])):
        return _mapping_converter(args, memo)
    if tp is None or tp is type(None):

        def check_none(value: Any, location: str) -> Any:
            if value is not None:
                _expected(None, value, location)
            return None

        return check_none
    if origin is not None:
        return None  # some other generic: not checked
    if not isinstance(tp, type):
        return None  # TypeVar, NewType, ...: not checked
    if is_pydantic_model(tp):
        return _pydantic_converter(tp)
    if is_msgspec_struct(tp):
        return _msgspec_converter(tp)
    if dataclasses.is_dataclass(tp) or typing.is_typeddict(tp):
        return _record_converter(tp, memo)
    if tp in (list, set, frozenset, tuple):
        return _sequence_converter(tp, (), memo)
    if tp is dict:
        return _mapping_converter((), memo)
    return _scalar_converter(tp)


def _model_of(annotation: Any) -> tuple[Any, bool] | None:
    """``(model, accepts None)`` if ``annotation`` is a model (or ``model | None``)."""
    if typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    allows_none = False
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        if len(args) != 1:
            return None
        annotation, allows_none = args[0], True
    if not isinstance(annotation, type):
        return None
    if (
        is_pydantic_model(annotation)
        or is_msgspec_struct(annotation)
        or dataclasses.is_dataclass(annotation)
        or typing.is_typeddict(annotation)
    ):
        return annotation, allows_none
    return None


def body_converter(annotation: Any) -> Callable[[Any], Any] | None:
    """``convert(body)`` raising InvalidMessage, or ``None`` for a plain annotation."""
    found = _model_of(annotation)
    if found is None:
        return None
    model, allows_none = found
    convert = _compile(model, {})
    assert convert is not None
    name = model.__name__

    def convert_body(body: Any) -> Any:
        if body is None and allows_none:
            return None
        try:
            return convert(body, "")
        except _Invalid as exc:
            raise _invalid_message(name, exc.errors) from None

    return convert_body

"""Typed messages and typed remote errors (``docs/typed.md``).

Two independent halves, each a few calls the communicator makes; nothing here touches the
wire format, so a kiwiPy peer sees plain data and ignores the one extra header.

Typed messages:
    * :func:`adapt_subscriber` at subscription: a subscriber whose message parameter is
      annotated with a pydantic model, a msgspec ``Struct``, a dataclass or a ``TypedDict``
      (or ``X | None`` of one) is wrapped so that it receives the body converted to that type,
      and its returned model goes back as plain data. A body that does not validate raises
      :class:`~kiwi_anyio.InvalidMessage` (naming the fields) before the subscriber runs. Any
      other subscriber is returned as it is: no cost at all.
    * :func:`to_plain` on every body sent: a model becomes plain data; plain values pass
      through after one type check.

Typed remote errors:
    * :func:`register_remote_error` (also a decorator) registers an exception class under its
      qualified name ``module.QualName``.
    * :func:`remote_error_headers` gives the headers of an exception reply: the qualified
      names of the exception's type and of its bases. :func:`attach_error_headers` keeps them
      in the reply dict, :func:`split_reply_headers` takes them out when it is encoded, so
      they follow the reply through every path that sends (or resends) it.
    * :func:`rebuild_remote_error` turns the caller's :class:`~kiwi_anyio.RemoteException`
      into the registered type, or leaves it unchanged. A name is only ever looked up in the
      registry: nothing is imported or constructed for a name nobody registered.

pydantic and msgspec are optional: they are never imported here. A class can only be a
pydantic model (a msgspec ``Struct``) if pydantic (msgspec) is already imported, so the checks
look in ``sys.modules``.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import decimal
import enum
import functools
import inspect
import logging
import sys
import types
import typing
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, Literal, TypeVar

from .exceptions import InvalidMessage, RemoteException
from .filters import BroadcastFilter

__all__ = [
    "ERROR_BASES_HEADER",
    "ERROR_TYPE_HEADER",
    "REPLY_HEADERS_KEY",
    "SubscriberKind",
    "adapt_subscriber",
    "attach_error_headers",
    "qualified_name",
    "rebuild_remote_error",
    "register_remote_error",
    "remote_error_headers",
    "split_reply_headers",
    "to_plain",
    "unregister_remote_error",
]

logger = logging.getLogger(__name__)

SubscriberKind = Literal["task", "rpc", "broadcast"]
_KINDS: Final = frozenset({"task", "rpc", "broadcast"})

E = TypeVar("E", bound=Exception)

#: the qualified name of the exception's type (``module.QualName``)
ERROR_TYPE_HEADER: Final = "x-kiwi-error-type"
#: the qualified names of its bases, nearest first, comma-separated (below ``Exception``)
ERROR_BASES_HEADER: Final = "x-kiwi-error-bases"
_MAX_NAMES: Final = 16  # names read from (and written to) the headers
_MAX_NAME_LENGTH: Final = 512
_MAX_HEADER_LENGTH: Final = _MAX_NAMES * (_MAX_NAME_LENGTH + 1)
_MAX_ERRORS: Final = 10  # failing fields named in an InvalidMessage
_MAX_REPR: Final = 40


# =========================================================================== optional libraries


_bases: dict[str, type[Any]] = {}  # "pydantic"/"msgspec" -> BaseModel/Struct, once imported


def _pydantic_model() -> type[Any] | None:
    """``pydantic.BaseModel`` (v2) if pydantic is imported (nobody can have a model otherwise)."""
    base = _bases.get("pydantic")
    if base is None:
        module = sys.modules.get("pydantic")
        found = getattr(module, "BaseModel", None) if module is not None else None
        if not (isinstance(found, type) and hasattr(found, "model_validate")):  # v1: no
            return None
        base = _bases["pydantic"] = found
    return base


def _msgspec_struct() -> type[Any] | None:
    """``msgspec.Struct`` if msgspec is imported."""
    base = _bases.get("msgspec")
    if base is None:
        module = sys.modules.get("msgspec")
        found = getattr(module, "Struct", None) if module is not None else None
        if not isinstance(found, type):
            return None
        base = _bases["msgspec"] = found
    return base


def _is_pydantic_model(tp: Any) -> bool:
    base = _pydantic_model()
    return base is not None and isinstance(tp, type) and issubclass(tp, base)


def _is_msgspec_struct(tp: Any) -> bool:
    base = _msgspec_struct()
    return base is not None and isinstance(tp, type) and issubclass(tp, base)


# =========================================================================== to plain data

#: plain values that contain nothing
_SCALARS: Final[frozenset[type]] = frozenset({str, int, float, bool, type(None), bytes})
#: types that are plain data as they are (containers are not searched for models)
_PLAIN: Final[frozenset[type]] = frozenset(
    {str, int, float, bool, type(None), bytes, dict, list, tuple}
)


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
    base = _pydantic_model()
    if base is not None and isinstance(value, base):
        return value.model_dump(mode="json")
    base = _msgspec_struct()
    if base is not None and isinstance(value, base):
        return sys.modules["msgspec"].to_builtins(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        names = _FIELD_NAMES.get(type(value))
        if names is None:
            names = _FIELD_NAMES[type(value)] = tuple(f.name for f in dataclasses.fields(value))
        result = {}
        for name in names:
            item = getattr(value, name)
            result[name] = item if type(item) in _SCALARS else _deep_plain(item)
        return result
    if not deep:
        return value
    if isinstance(value, enum.Enum):
        return _deep_plain(value.value)
    if isinstance(value, datetime.date | datetime.time):  # datetime is a date
        return value.isoformat()
    if isinstance(value, uuid.UUID | decimal.Decimal):
        return str(value)
    if isinstance(value, set | frozenset):
        return [_deep_plain(item) for item in value]
    return value


def _deep_plain(value: Any) -> Any:
    """Inside a dataclass (and for a typed subscriber's result): containers are searched,
    special values become plain."""
    kind = type(value)
    if kind in _SCALARS:
        return value
    if isinstance(value, dict):
        scalars = _SCALARS
        return {
            k if type(k) in scalars else _deep_plain(k): v if type(v) in scalars else _deep_plain(v)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [item if type(item) in _SCALARS else _deep_plain(item) for item in value]
    return _model_to_plain(value, deep=True)


#: dataclass -> its field names (``dataclasses.fields`` is slow per call)
_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


# =========================================================================== from plain data


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


def _dataclass_converter(cls: type[Any], memo: dict[Any, _Converter]) -> _Converter:
    fields: list[tuple[str, bool, _Converter | None]] = []  # name, required, convert

    def convert(value: Any, location: str) -> Any:
        if not isinstance(value, Mapping):
            _expected(cls, value, location)
        kwargs: dict[str, Any] = {}
        errors: list[tuple[str, str]] = []
        for name, required, field_convert in fields:
            if name not in value:
                if required:
                    errors.append((_join(location, name), "field required"))
                continue
            item = value[name]
            if field_convert is None:
                kwargs[name] = item
                continue
            try:
                kwargs[name] = field_convert(item, _join(location, name))
            except _Invalid as exc:
                errors += exc.errors
        if errors:
            raise _Invalid(errors)
        try:
            return cls(**kwargs)
        except (TypeError, ValueError) as exc:  # __post_init__ checks
            _fail(location, str(exc) or type(exc).__name__)

    memo[cls] = convert  # before the fields: a dataclass may contain itself
    hints = _type_hints(cls)
    for field in dataclasses.fields(cls):
        if not field.init:
            continue
        required = (
            field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
        )
        fields.append((field.name, required, _compile(hints.get(field.name, Any), memo)))
    return convert


def _typeddict_converter(cls: type[Any], memo: dict[Any, _Converter]) -> _Converter:
    keys: list[tuple[str, bool, _Converter | None]] = []

    def convert(value: Any, location: str) -> Any:
        if not isinstance(value, Mapping):
            _expected(cls, value, location)
        result: dict[str, Any] = {}
        errors: list[tuple[str, str]] = []
        for name, required, item_convert in keys:
            if name not in value:
                if required:
                    errors.append((_join(location, name), "field required"))
                continue
            item = value[name]
            if item_convert is None:
                result[name] = item
                continue
            try:
                result[name] = item_convert(item, _join(location, name))
            except _Invalid as exc:
                errors += exc.errors
        if errors:
            raise _Invalid(errors)
        return result

    memo[cls] = convert
    required_keys: frozenset[str] = getattr(cls, "__required_keys__", frozenset())
    for name, hint in _type_hints(cls, extras=True).items():
        # with string annotations Python 3.11 cannot see NotRequired[...] in __required_keys__
        required = name in required_keys
        origin = typing.get_origin(hint)
        if origin is typing.NotRequired or origin is typing.Required:
            required = origin is typing.Required
            hint = typing.get_args(hint)[0]
        keys.append((name, required, _compile(hint, memo)))
    return convert


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
    if _is_pydantic_model(tp):
        return _pydantic_converter(tp)
    if _is_msgspec_struct(tp):
        return _msgspec_converter(tp)
    if dataclasses.is_dataclass(tp):
        return _dataclass_converter(tp, memo)
    if typing.is_typeddict(tp):
        return _typeddict_converter(tp, memo)
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
        _is_pydantic_model(annotation)
        or _is_msgspec_struct(annotation)
        or dataclasses.is_dataclass(annotation)
        or typing.is_typeddict(annotation)
    ):
        return annotation, allows_none
    return None


def _body_converter(annotation: Any) -> Callable[[Any], Any] | None:
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


# =========================================================================== subscribers


def _message_annotation(fn: Callable[..., Any]) -> Any:
    """The annotation of the subscriber's second positional parameter, or ``None``."""
    try:
        signature = inspect.signature(fn, eval_str=True)
    except (TypeError, ValueError):  # no signature (a builtin)
        return None
    except Exception as exc:  # an annotation that does not resolve (NameError, ...)
        logger.warning(
            "subscriber %r: its annotations do not resolve (%s): it receives plain bodies",
            fn,
            exc,
        )
        return None
    positional = [
        p
        for p in signature.parameters.values()
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    if len(positional) < 2:
        return None
    annotation = positional[1].annotation
    if annotation is inspect.Parameter.empty or isinstance(annotation, str):
        return None
    return annotation


def _is_async(fn: Callable[..., Any]) -> bool:
    """As the communicator decides: ``async def``, or an object with an ``async`` __call__."""
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - callable objects with async __call__
    )


def adapt_subscriber(fn: Callable[..., Any], kind: SubscriberKind) -> Callable[..., Any]:
    """The subscriber to register for ``fn``: typed if its message parameter asks for it.

    Task and RPC subscribers are called ``fn(comm, msg)``, broadcast subscribers
    ``fn(comm, body, sender, subject, correlation_id)``; the annotation of ``msg`` (``body``)
    decides. For a pydantic model, a msgspec ``Struct``, a dataclass or a ``TypedDict`` (or
    ``X | None`` of one) the result is a wrapper that converts the plain body to that type,
    raising :class:`~kiwi_anyio.InvalidMessage` (before ``fn`` runs) when it does not
    validate, and converts the returned value to plain data as :func:`to_plain` does, in
    containers too (a dict or list of models, a ``TypedDict`` holding a dataclass). The wrapper is
    ``async`` exactly when ``fn`` is. A :class:`~kiwi_anyio.BroadcastFilter` is seen through:
    its filters run first, then the typed subscriber.

    Every other subscriber (no annotation, ``Any``, ``int``, ``dict[str, Any]``, ...) is
    returned unchanged: the same object, with no cost per message.

    Raises:
        ValueError: ``kind`` is not ``"task"``, ``"rpc"`` or ``"broadcast"``.
        TypeError: the annotated model's own annotations do not resolve.
    """
    if kind not in _KINDS:
        raise ValueError(f"kind must be 'task', 'rpc' or 'broadcast', not {kind!r}")
    if kind == "broadcast" and isinstance(fn, BroadcastFilter):
        return _adapt_filter(fn)
    convert = _body_converter(_message_annotation(fn))
    if convert is None:
        return fn
    plain = _deep_plain  # the typed path: returned containers are searched for models too
    wrapper: Callable[..., Any]
    if _is_async(fn):

        async def typed_async(comm: Any, body: Any, /, *args: Any, **kwargs: Any) -> Any:
            return plain(await fn(comm, convert(body), *args, **kwargs))

        wrapper = typed_async
    else:

        def typed(comm: Any, body: Any, /, *args: Any, **kwargs: Any) -> Any:
            return plain(fn(comm, convert(body), *args, **kwargs))

        wrapper = typed
    functools.update_wrapper(wrapper, fn, updated=())
    return wrapper


def _adapt_filter(fn: BroadcastFilter[Any]) -> Callable[..., Any]:
    inner = adapt_subscriber(fn.subscriber, "broadcast")
    if inner is fn.subscriber:
        return fn
    return _TypedFilter(fn, inner)


class _TypedFilter(BroadcastFilter[Any]):
    """A :class:`BroadcastFilter` whose subscriber is the typed one, with the filters (live)
    of the user's filter: the communicator tests the filter, then calls the subscriber (in
    the event loop if it is ``async``), and a filtered-out message is never validated."""

    def __init__(self, original: BroadcastFilter[Any], subscriber: Callable[..., Any]) -> None:
        super().__init__(subscriber)
        self._original = original

    def is_filtered(self, sender: Any, subject: Any) -> bool:
        """The user's filter decides."""
        return self._original.is_filtered(sender, subject)

    def add_subject_filter(self, subject_filter: Any) -> None:
        """Added to the user's filter."""
        self._original.add_subject_filter(subject_filter)

    def add_sender_filter(self, sender_filter: Any) -> None:
        """Added to the user's filter."""
        self._original.add_sender_filter(sender_filter)

    def __repr__(self) -> str:
        return repr(self._original)


# =========================================================================== remote errors

_REGISTRY: dict[str, type[Exception]] = {}
#: registered class -> the class combining it with RemoteException (None: cannot be made)
_REMOTE_CLASSES: dict[type[Exception], type[Exception] | None] = {}


def qualified_name(cls: type[Any]) -> str:
    """``module.QualName``, the name a remote error type is registered and sent under."""
    return f"{cls.__module__}.{cls.__qualname__}"


def register_remote_error(cls: type[E]) -> type[E]:
    """Re-raise remote exceptions of type ``cls`` (or a subclass) as ``cls`` on this side.

    Usable as a class decorator; returns ``cls``. The type is matched by its qualified name
    ``module.QualName``, which the replying peer sends in a header (a kiwiPy peer sends none:
    its errors stay :class:`~kiwi_anyio.RemoteException`). A later registration of another
    class with the same name replaces the earlier one.

    The caller's future then raises an instance of a class made once per registered type,
    subclass of both ``cls`` and :class:`~kiwi_anyio.RemoteException`, named as ``cls``:
    ``except MyError`` and ``except RemoteException`` both catch it, so registering a type
    never breaks code that handled the ``RemoteException``. It is made without calling
    ``cls.__init__`` (its arguments never cross the wire): ``str(exc)`` is the remote
    message, ``exc.args == (message,)``, ``remote_type`` and ``remote_traceback`` are set, and
    attributes only ``__init__`` sets are missing (give them class-level defaults). For a
    class that cannot be combined with RemoteException (a conflicting layout or metaclass),
    the instance is of ``cls`` itself with the ``RemoteException`` as its ``__cause__``.
    A subclass of RemoteException (such as :class:`~kiwi_anyio.InvalidMessage`, registered
    by default) is used as it is.

    Raises:
        TypeError: ``cls`` is not a subclass of :class:`Exception`.
    """
    if not (isinstance(cls, type) and issubclass(cls, Exception)):
        raise TypeError(f"a remote error type must be an Exception subclass, not {cls!r}")
    _REGISTRY[qualified_name(cls)] = cls
    return cls


def unregister_remote_error(cls: type[Exception]) -> None:
    """Stop re-raising ``cls``: its errors arrive as :class:`~kiwi_anyio.RemoteException`."""
    name = qualified_name(cls)
    if _REGISTRY.get(name) is cls:
        del _REGISTRY[name]
    _REMOTE_CLASSES.pop(cls, None)


def remote_error_headers(exc: BaseException) -> dict[str, str]:
    """The headers of the exception reply to ``exc``: its type's qualified name
    (``x-kiwi-error-type``) and its bases' (``x-kiwi-error-bases``, nearest first, below
    ``Exception``), so a caller that registered a base class gets that. kiwiPy ignores them."""
    names: list[str] = []
    for cls in type(exc).__mro__:
        if cls is Exception or cls is BaseException or cls is object:
            break
        name = qualified_name(cls)
        if len(name) <= _MAX_NAME_LENGTH and "," not in name and name not in names:
            names.append(name)
            if len(names) == _MAX_NAMES:
                break
    if not names:
        return {}
    headers = {ERROR_TYPE_HEADER: names[0]}
    if len(names) > 1:
        headers[ERROR_BASES_HEADER] = ",".join(names[1:])
    return headers


#: where :func:`attach_error_headers` keeps an exception reply's headers until it is encoded
REPLY_HEADERS_KEY: Final = "\x00kiwi_anyio.headers"


def attach_error_headers(reply: dict[str, Any], exc: BaseException) -> dict[str, Any]:
    """Keep :func:`remote_error_headers` of ``exc`` in the exception reply ``reply`` (and
    return it), for :func:`split_reply_headers` to take out when the reply is encoded: the
    headers travel with the reply through every path that sends (or resends) it."""
    headers = remote_error_headers(exc)
    if headers:
        reply[REPLY_HEADERS_KEY] = headers
    return reply


def split_reply_headers(
    reply: dict[str, Any],
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """``(body, headers)`` of a reply about to be encoded: the body without what
    :func:`attach_error_headers` kept in it (``reply`` itself is not changed, so it can be
    sent again), and those headers, or ``None``. One dict lookup for any other reply."""
    if REPLY_HEADERS_KEY not in reply:
        return reply, None
    body = dict(reply)
    headers = body.pop(REPLY_HEADERS_KEY)
    return body, headers if isinstance(headers, dict) else None


def _header_text(value: Any) -> str:
    if isinstance(value, bytes | bytearray):
        value = bytes(value[:_MAX_HEADER_LENGTH]).decode("utf-8", "replace")
    return value[:_MAX_HEADER_LENGTH] if isinstance(value, str) else ""


def rebuild_remote_error(
    remote: RemoteException, headers: Mapping[str, Any] | None
) -> BaseException:
    """The exception the caller's future raises for the exception reply ``remote``.

    Looks the names of the reply's ``headers`` (see :func:`remote_error_headers`) up in the
    registry, the exception's own type first, then its bases; the first registered one gives
    an instance of that type (see :func:`register_remote_error`), carrying ``remote``'s
    message, ``remote_type`` and ``remote_traceback``. With no registered name (no headers,
    a kiwiPy peer, a type nobody registered) ``remote`` is returned unchanged. Names are only
    looked up, never imported: a header naming ``os.system`` constructs nothing.
    """
    if not headers or type(remote) is not RemoteException:
        return remote  # already rebuilt (or a local subclass): leave it
    first = _header_text(headers.get(ERROR_TYPE_HEADER))
    if not first:
        return remote
    cls = _REGISTRY.get(first)
    if cls is None:
        bases = _header_text(headers.get(ERROR_BASES_HEADER)).split(",", _MAX_NAMES)
        for name in bases[: _MAX_NAMES - 1]:
            cls = _REGISTRY.get(name.strip())
            if cls is not None:
                break
        else:
            return remote
    try:
        return _instantiate(cls, remote)
    except Exception as exc:  # a hostile __new__: keep the RemoteException
        logger.warning("could not rebuild remote %s: %r", qualified_name(cls), exc)
        return remote


def _remote_class(cls: type[Exception]) -> type[Exception] | None:
    if cls in _REMOTE_CLASSES:
        return _REMOTE_CLASSES[cls]

    def body(namespace: dict[str, Any]) -> None:
        namespace.update(
            __module__=cls.__module__,
            __qualname__=cls.__qualname__,
            __doc__=cls.__doc__,
            __str__=_remote_str,
            __reduce__=_remote_reduce,
        )
        namespace["_kiwi_registered"] = cls

    made: type[Exception] | None
    try:
        made = types.new_class(cls.__name__, (cls, RemoteException), exec_body=body)
    except TypeError:  # layout or metaclass conflict, a final class, an MRO that cannot be
        made = None
    _REMOTE_CLASSES[cls] = made
    return made


def _remote_str(self: BaseException) -> str:
    return str(self.args[0]) if self.args else ""


def _remote_reduce(self: Any) -> tuple[Any, ...]:
    return (
        _unpickle_remote,
        (self._kiwi_registered, self.args, self.remote_type, self.remote_traceback),
    )


def _unpickle_remote(
    cls: type[Exception], args: tuple[Any, ...], remote_type: Any, remote_traceback: Any
) -> BaseException:
    message = args[0] if args else ""
    return _instantiate(cls, RemoteException(message, remote_type, remote_traceback))


def _instantiate(cls: type[Exception], remote: RemoteException) -> BaseException:
    message = remote.args[0] if remote.args else ""
    if issubclass(cls, RemoteException):
        target: type[Exception] = cls
        cause = None
    else:
        made = _remote_class(cls)
        target, cause = (made, None) if made is not None else (cls, remote)
    exc = cls.__new__(target, message)  # BaseException.__new__ sets args; no __init__
    if not isinstance(exc, target):
        raise TypeError(f"{qualified_name(cls)}.__new__ returned {type(exc).__name__}")
    exc.args = (message,)
    exc.remote_type = remote.remote_type  # type: ignore[attr-defined]
    exc.remote_traceback = remote.remote_traceback  # type: ignore[attr-defined]
    if cause is not None:
        exc.__cause__ = cause
    return exc


register_remote_error(InvalidMessage)

"""The fast path of the default YAML codec: flow-style YAML 1.1 written and read by C ``json``.

kiwiPy's wire format is YAML (``yaml.dump`` / ``yaml.load(..., Loader=yaml.FullLoader)``).
PyYAML's emitter is pure Python (about 10 µs per node), so this module writes plain data in
the subset of YAML 1.1 *flow* style that is also JSON, with the C ``json`` encoder doing the
work, and adds YAML's own syntax only where JSON has no equivalent: ``!!python/tuple [...]``,
``!!binary "..."``, ``!!set {...}``, ``!!timestamp "..."``, ``!!python/complex "..."``, plain
``.nan``/``.inf`` and non-string keys. What it writes is a YAML document any YAML 1.1 loader
reads back to an equal value of the same types; it is not byte-identical to ``yaml.dump``.

The YAML 1.1 hazards of JSON text, and how they are handled:

* floats: YAML 1.1 resolves a plain scalar as a float only with a dot, and an exponent only
  with a sign (``1e+16`` and ``1.5e5`` are strings; ``1.0e+16`` is a float); NaN and the
  infinities are ``.nan``, ``.inf``, ``-.inf``. Floats are written as ``yaml.dump`` writes them.
* characters that JSON leaves raw but YAML does not read as themselves: the line breaks U+0085,
  U+2028, U+2029 (folded into spaces inside quoted scalars), DEL, the C1 controls, U+FEFF,
  U+FFFE, U+FFFF and lone surrogates (not printable for YAML's reader): escaped as
  ``\\xXX``/``\\uXXXX``. Characters outside the BMP are written raw (as UTF-8), never as a
  JSON surrogate pair, which YAML would read as two characters.
* mapping keys: YAML allows an implicit key of at most 1024 characters; a longer key (rare)
  goes to PyYAML, which writes an explicit ``? key``. Keys that are not strings (``int``,
  ``bool``, ``None``, ``float``) are written as YAML plain scalars; other keys go to PyYAML.
* mappings are written with their keys sorted, as ``yaml.dump`` does (insertion order when the
  keys cannot be sorted).
* a container holding containers that appears twice (any cycle passes through one) goes to
  PyYAML, which writes an anchor and aliases, and so does nesting deeper than
  :data:`MAX_DEPTH`; a list or dict of plain values referenced twice is written twice (an
  equal value, where PyYAML writes an anchor and the receiver gets one shared object).

:func:`encode` returns ``None`` for any value it does not handle; the caller then uses PyYAML.

:func:`decode` reads a body with ``json`` only when the body is in a form for which JSON and
YAML 1.1 give the same value, and returns :data:`MISS` otherwise (the caller then uses the YAML
loader). JSON and YAML 1.1 agree on a JSON document when: it is an object, an array, a string,
a number, ``true``, ``false`` or ``null`` (or ``!!python/tuple`` followed by a JSON array, as
:func:`encode` writes tuples; ``bytes`` alone, ``!!binary "base64"``, are decoded with
:mod:`base64` as YAML's constructor does), with nothing before it (not even a space); it is one
line (an optional final newline) without tabs or carriage returns; no float has an exponent
without a dot and a sign, and there is no ``NaN``/``Infinity``; no string has a raw character
of the hazard list above or a ``\\uD800``-``\\uDFFF`` escape; and no mapping key could be over
YAML's 1024-character limit (keys of at most 160 characters, no run of 64 spaces, checked only
on bodies over 1,000 characters with a ``{`` in them). JSON's escapes
(``\\" \\\\ \\/ \\b \\f \\n \\r \\t \\uXXXX``) mean the same in YAML's double-quoted
scalars, JSON's numbers, ``true``, ``false`` and ``null`` resolve to the same values, and a
quoted key is always a string (never a ``<<`` merge).
Anything else, kiwiPy's block-style YAML included, is left to the YAML loader.
"""

from __future__ import annotations

import base64
import json
import re
from datetime import date, datetime
from typing import Any, Final

__all__ = ["MAX_DEPTH", "MISS", "decode", "encode"]

#: Containers nested deeper than this are left to PyYAML.
MAX_DEPTH: Final = 100

#: Longest string key (in characters) written or accepted as an implicit key: escaped, a
#: character takes at most 6 (``\\uXXXX``), and YAML's limit is 1024.
_MAX_KEY: Final = 160

#: Mappings up to this size are checked with a loop, larger ones with sets of types.
_SMALL: Final = 8

#: Longest key text, once written, for YAML's implicit keys (limit 1024).
_MAX_KEY_TEXT: Final = 1000


class _Miss:
    """The type of :data:`MISS`."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "MISS"


#: What :func:`decode` returns for a body it leaves to the YAML loader.
MISS: Final = _Miss()


class _Fallback(Exception):
    """Raised inside the fast paths: leave this value or body to PyYAML."""


# --------------------------------------------------------------------------- encoding

#: Exact types the C encoder writes exactly as YAML reads them back.
_ATOMS: Final[frozenset[type]] = frozenset({str, int, bool, type(None)})
#: ... and floats, which it may write as YAML strings (``1e+16``) or refuse (NaN).
_ATOMS_AND_FLOAT: Final[frozenset[type]] = _ATOMS | {float}
_STR: Final[frozenset[type]] = frozenset({str})

_JSON: Final = json.JSONEncoder(
    ensure_ascii=False, sort_keys=True, check_circular=False, allow_nan=False
)
_json_encode: Final = _JSON.encode
_encode_str: Final = json.encoder.encode_basestring  # the C version when _json is there

#: Characters ``json`` leaves raw that YAML's readers refuse or take for line breaks.
_HAZARDS: Final = re.compile("[\x7f-\x9f\u2028\u2029\ufeff\ufffe\uffff\ud800-\udfff]")


def _escape_hazard(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02X}" if code < 0x100 else f"\\u{code:04X}"


def _float(value: float) -> str:
    """A float as ``yaml.dump`` writes it."""
    if value != value:
        return ".nan"
    if value == float("inf"):
        return ".inf"
    if value == float("-inf"):
        return "-.inf"
    text = float.__repr__(value)
    if "e" in text and "." not in text:
        text = text.replace("e", ".0e", 1)
    return text


def _complex(value: complex) -> str:
    """A complex number as ``yaml.dump`` writes it."""
    if value.imag == 0.0:
        return repr(value.real)
    if value.real == 0.0:
        return f"{value.imag!r}j"
    if value.imag > 0:
        return f"{value.real!r}+{value.imag!r}j"
    return f"{value.real!r}{value.imag!r}j"


def _str_key(key: str) -> str:
    text = _encode_str(key)
    if len(key) > _MAX_KEY:
        text = _HAZARDS.sub(_escape_hazard, text)
        if len(text) > _MAX_KEY_TEXT:
            raise _Fallback
    return text


def _key(key: Any) -> str:
    cls = type(key)
    if cls is str:
        return _str_key(key)
    if cls is int:
        text = int.__repr__(key)
        if len(text) > _MAX_KEY_TEXT:
            raise _Fallback
        return text
    if cls is bool:
        return "true" if key else "false"
    if key is None:
        return "null"
    if cls is float:
        return _float(key)
    raise _Fallback  # a tuple, a date, ...: PyYAML writes it as an explicit key


def _plain(obj: Any, depth: int, seen: set[int] | None) -> bool:
    """The C encoder writes ``obj`` as YAML that reads back as ``obj``.

    That is: atoms, floats whose ``repr`` has a dot and no exponent, and lists and dicts of
    those (no tuples: they need a tag), with string keys of at most ``_MAX_KEY`` characters,
    nested at most :data:`MAX_DEPTH` deep, no container with containers in it met twice
    (``seen``, made when first needed; a cycle always passes through one).
    """
    cls = type(obj)
    if cls is dict:
        if not obj:
            return True
        if len(obj) <= _SMALL:  # a loop beats building sets for a few items
            nested = False
            for key, value in obj.items():
                if type(key) is not str or len(key) > _MAX_KEY:
                    return False
                kind = type(value)
                if kind in _ATOMS:
                    continue
                if kind is float:
                    if not (value == 0.0 or 1e-4 <= abs(value) < 1e16):
                        return False
                    continue
                nested = True
            if not nested:
                return True
        elif set(map(type, obj)) != _STR or max(map(len, obj)) > _MAX_KEY:
            return False
        elif _plain_atoms(obj.values()):
            return True
        values: Any = obj.values()
    elif cls is list:
        if not obj:
            return True
        if _plain_atoms(obj):
            return True
        values = obj
    elif cls is float:
        number: float = obj
        return number == 0.0 or 1e-4 <= abs(number) < 1e16
    else:
        return cls in _ATOMS
    if depth >= MAX_DEPTH:
        return False
    if seen is None:
        seen = set()
    ident = id(obj)
    if ident in seen:
        return False
    seen.add(ident)
    depth += 1
    for value in values:  # noqa: SIM110 (a loop is faster than all() and a generator)
        if not _plain(value, depth, seen):
            return False
    return True


def _plain_atoms(values: Any) -> bool:
    """All of ``values`` are atoms or plain floats."""
    types = set(map(type, values))
    if types <= _ATOMS:
        return True
    if types <= _ATOMS_AND_FLOAT:
        for value in values:
            if type(value) is float and not (value == 0.0 or 1e-4 <= abs(value) < 1e16):
                return False
        return True
    return False


class _Emitter:
    """One :func:`encode` call that :func:`_plain` refused as a whole: node by node.

    Every container that :func:`_plain` accepts is handed to the C encoder; the rest is
    written here. A container met twice (shared or cyclic) ends the fast path: PyYAML then
    writes anchors and aliases.
    """

    __slots__ = ("seen",)

    def __init__(self) -> None:
        self.seen: set[int] = set()

    def enter(self, container: object, depth: int) -> None:
        ident = id(container)
        if ident in self.seen or depth >= MAX_DEPTH:
            raise _Fallback
        self.seen.add(ident)

    def emit(self, obj: Any, depth: int) -> str:
        cls = type(obj)
        if cls is str:
            return _encode_str(obj)
        if cls is dict:
            return self.mapping(obj, depth)
        if cls is list:
            return self.sequence(obj, depth)
        if cls is tuple:
            return "!!python/tuple " + self.sequence(obj, depth)
        if cls is int:
            return int.__repr__(obj)
        if cls is bool:
            return "true" if obj else "false"
        if obj is None:
            return "null"
        if cls is float:
            return _float(obj)
        if cls is bytes:
            return '!!binary "' + base64.b64encode(obj).decode("ascii") + '"'
        if cls is set:
            self.enter(obj, depth)
            try:
                keys = sorted(obj)
            except TypeError:
                keys = list(obj)
            return "!!set {" + ", ".join([_key(k) + ": null" for k in keys]) + "}"
        if cls is datetime:
            return f'!!timestamp "{obj.isoformat(" ")}"'
        if cls is date:
            return f'!!timestamp "{obj.isoformat()}"'
        if cls is complex:
            return '!!python/complex "' + _complex(obj) + '"'
        raise _Fallback  # PyYAML raises the TypeError, or writes what this does not

    def sequence(self, items: list[Any] | tuple[Any, ...], depth: int) -> str:
        if not items:
            return "[]"
        self.enter(items, depth)
        if _plain_items(items, depth):
            return _json_encode(items)
        emit = self.emit
        depth += 1
        return "[" + ", ".join([emit(item, depth) for item in items]) + "]"

    def mapping(self, mapping: dict[Any, Any], depth: int) -> str:
        if not mapping:
            return "{}"
        self.enter(mapping, depth)
        if _plain(mapping, depth, None):
            return _json_encode(mapping)
        try:
            items = sorted(mapping.items())
        except TypeError:  # keys of different types: yaml.dump keeps the order too
            items = list(mapping.items())
        emit = self.emit
        depth += 1
        return "{" + ", ".join([_key(k) + ": " + emit(v, depth) for k, v in items]) + "}"


def _plain_items(items: list[Any] | tuple[Any, ...], depth: int) -> bool:
    """Every item of a list or tuple is :func:`_plain` (the C encoder writes both as arrays)."""
    if set(map(type, items)) <= _ATOMS:
        return True
    seen: set[int] = set()
    depth += 1
    for item in items:  # noqa: SIM110 (a loop is faster than all() and a generator)
        if not _plain(item, depth, seen):
            return False
    return True


def encode(obj: Any) -> bytes | None:
    """``obj`` as a one-line flow-style YAML document (UTF-8, no final newline), or ``None``.

    ``None`` means: use PyYAML.

    ``None`` is returned for anything this does not write itself: other types (PyYAML then
    raises the codec's :class:`TypeError`), shared or cyclic containers, tuples or other
    unusual values as mapping keys, keys over YAML's length limit, ints over Python's
    conversion limit, nesting deeper than :data:`MAX_DEPTH`.
    """
    try:
        if type(obj) is tuple:  # a task: (task, no_reply)
            if _plain_items(obj, 0):
                text = "!!python/tuple " + _json_encode(obj)
            else:
                text = _Emitter().emit(obj, 0)
        elif _plain(obj, 0, None):  # a reply, a broadcast, an RPC message...
            text = _json_encode(obj)
        else:
            text = _Emitter().emit(obj, 0)
    except (_Fallback, TypeError, ValueError, RecursionError):
        return None
    if not text.isascii() or "\x7f" in text:
        text = _HAZARDS.sub(_escape_hazard, text)
    return text.encode("utf-8")


# --------------------------------------------------------------------------- decoding

#: A float that YAML 1.1 resolves as a float: a dot, and a signed exponent if any.
_YAML_FLOAT: Final = re.compile(r"-?[0-9]+\.[0-9]+(?:[eE][-+][0-9]+)?")
_RAW_HAZARDS: Final = re.compile("[\x7f-\x9f\u2028\u2029\ufeff\ufffe\uffff]")
_SURROGATE_ESCAPE: Final = re.compile(r"\\u[dD][89a-fA-F]")
_TUPLE_PREFIX: Final = b"!!python/tuple ["
_TUPLE_START: Final = len(_TUPLE_PREFIX) - 1
#: First bytes of the JSON documents considered: containers, strings, numbers, true/false/null.
_STARTS: Final = frozenset(b'{["-0123456789tfn')


def _parse_float(text: str) -> float:
    # JSON calls this for a number with a fraction or an exponent; YAML 1.1 reads it as a
    # float only with a dot, and an exponent only with a sign (1e5 and 1.5e5 are strings)
    if ("e" in text or "E" in text) and _YAML_FLOAT.fullmatch(text) is None:
        raise _Fallback
    if "." not in text:
        raise _Fallback
    return float(text)


def _parse_constant(text: str) -> Any:
    raise _Fallback  # NaN, Infinity, -Infinity: strings in YAML


def _short_keys(mapping: dict[str, Any]) -> dict[str, Any]:
    if mapping and max(map(len, mapping)) > _MAX_KEY:
        raise _Fallback  # maybe over YAML's implicit key limit: let YAML decide
    return mapping


_DECODER: Final = json.JSONDecoder(parse_float=_parse_float, parse_constant=_parse_constant)
_KEY_CHECKING_DECODER: Final = json.JSONDecoder(
    parse_float=_parse_float, parse_constant=_parse_constant, object_hook=_short_keys
)


_BINARY_PREFIX: Final = b'!!binary "'
#: ``bytes`` as :func:`encode` writes them at the top of a body: a double-quoted scalar of
#: base64 characters only (no escapes, so the scalar's value is the text between the quotes).
_BINARY: Final = re.compile(rb'!!binary "([A-Za-z0-9+/=]*)"\n?')


def _decode_binary(data: bytes) -> Any:
    """``!!binary "..."``: what YAML's ``construct_yaml_binary`` gives, errors to the loader."""
    match = _BINARY.fullmatch(data)
    if match is None:
        return MISS
    try:
        return base64.decodebytes(match.group(1))  # what PyYAML's constructor calls
    except ValueError:  # binascii.Error: the loader raises it as a ConstructorError
        return MISS


def decode(data: bytes) -> Any:
    """The value of a body that is a JSON document YAML reads the same way, else :data:`MISS`.

    The value is the one YAML 1.1 gives (``!!python/tuple [...]`` is a tuple); :data:`MISS`
    means the body must be decoded with the YAML loader, which may also raise.
    """
    if type(data) is not bytes or not data:
        return MISS
    if data[0] in _STARTS:
        start = 0
    elif data.startswith(_TUPLE_PREFIX):
        start = _TUPLE_START
    elif data.startswith(_BINARY_PREFIX):
        return _decode_binary(data)
    else:
        return MISS
    newline = data.find(b"\n")
    if (newline != -1 and newline != len(data) - 1) or b"\t" in data or b"\r" in data:
        return MISS
    if data.isascii():
        if b"\x7f" in data:
            return MISS
        text = data.decode("ascii")
    else:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            return MISS
        if _RAW_HAZARDS.search(text) is not None:
            return MISS
    if "\\u" in text and _SURROGATE_ESCAPE.search(text) is not None:
        return MISS
    decoder = _DECODER
    if len(text) > _MAX_KEY_TEXT and "{" in text:  # a key could be long: check them all
        if " " * 64 in text:
            return MISS
        decoder = _KEY_CHECKING_DECODER
    try:
        value, end = decoder.raw_decode(text, start)
    except (_Fallback, ValueError, RecursionError):
        return MISS
    if end != len(text) and text[end:].strip(" \n"):
        return MISS
    if start:
        return tuple(value)
    return value

"""Message body codecs: how Python values become AMQP message bodies and back.

A :class:`Codec` is a content type plus an ``encode`` and a ``decode`` function. The
communicator encodes every body it sends with its configured codec. On receive it picks the
decoder with :func:`decoder_for`, from the message's ``content_type`` property.

Codecs provided:

* :data:`YAML` (the default, content type ``application/yaml``): kiwiPy 0.9's wire format.
  It encodes ``None``, ``bool``, ``int``, ``float``, ``complex``, ``str``, ``bytes``
  (``!!binary``), ``list``, ``tuple`` (``!!python/tuple``), ``dict`` (keys sorted, as
  ``yaml.dump`` sorts them), ``set`` (``!!set``), ``datetime.date`` and
  ``datetime.datetime``: every value that can be decoded safely. Any other type (including
  subclasses of those, such as enums or ``OrderedDict``) raises :class:`TypeError` naming the
  type, where kiwiPy would have written a ``!!python/object…`` tag that no safe loader accepts.
  Compatibility is of values, not bytes: kiwiPy's decoder (``yaml.load(body,
  Loader=yaml.FullLoader)``) reads what this codec sends as a value equal to the one sent, of
  the same types. Plain data is written as one line of flow-style YAML 1.1 by the C ``json``
  encoder (``{"i": 1, "p": "x"}``, ``!!python/tuple [{...}, false]``), with YAML's few
  differences from JSON handled (floats such as ``1.0e+16`` and ``.nan``, the line-break and
  non-printable characters YAML reads differently escaped, non-string keys, tags for tuples,
  bytes, sets, dates and complex numbers; see ``kiwi_anyio._fastyaml``). Anything else (a
  cycle or another container of containers referenced twice, a tuple as a key, a key over
  YAML's 1024-character limit, nesting over 100 deep) is written by PyYAML exactly as
  ``yaml.dump(obj, encoding='utf-8')`` writes it. (A list or dict of plain values referenced
  twice is written twice, so the receiver gets two equal objects, not one shared.) A body
  that is a JSON document YAML reads the same way (what this codec writes for plain data) is
  decoded with the C ``json`` decoder; any other body, such as kiwiPy's block-style YAML,
  with the YAML loader below, with the same result as before the fast path.
  Decoding is **safe**: PyYAML's safe loader plus the plain-data ``!!python/…`` tags that
  kiwiPy's ``FullLoader`` accepts (``tuple``, ``complex``, ``bytes``, ``str``, ``int``, …).
  Tags that name Python objects (``!!python/name:``, ``!!python/module:``, ``!!python/object:``,
  ``!!python/object/new:``, ``!!python/object/apply:``) raise :class:`UndecodableMessage` and
  never import or call anything. The parser is libyaml when PyYAML has it (with the same
  constructors as the pure-Python :class:`SafeYamlLoader`). kiwiPy decodes with
  ``yaml.FullLoader``, which still resolves ``!!python/name:`` (any importable function, e.g.
  ``os.system``).
* :data:`JSON` (``application/json``): tuples become lists; ``bytes``, sets and other
  non-JSON values raise :class:`TypeError`; NaN and infinities raise :class:`ValueError`
  (they are not JSON).
* :data:`MSGPACK` (``application/msgpack``): needs the optional ``msgpack`` package
  (``pip install 'kiwi-anyio[msgpack]'``). Tuples become arrays and arrive as lists.
* :data:`UNSAFE_PYTHON_YAML` (``application/x-python-yaml``): full PyYAML with arbitrary
  Python object construction (``yaml.UnsafeLoader``), for applications such as AiiDA that send
  Python objects. **Decoding it runs code chosen by whoever can publish to the broker.**
* :func:`codec_from_functions` wraps kiwiPy-style ``encoder``/``decoder`` callables.

Choosing the decoder (see :func:`decoder_for`). kiwiPy sends no ``content_type``, so a
message without one is decoded with the receiver's configured codec. A message with a content
type gets the receiver's configured codec if it names that codec's content type, else one of the
receiver's ``extra`` codecs, else one of the built-in safe codecs above; any other content type
is :class:`UndecodableMessage`. A header therefore never makes the receiver decode unsafely: the
only codec that may construct arbitrary objects is the one the receiver configured itself.
``application/x-python-yaml`` from a peer is decoded with the safe :data:`YAML` decoder unless
the receiver itself configured :data:`UNSAFE_PYTHON_YAML`: plain values still arrive, Python
objects are rejected.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from types import ModuleType
from typing import Any, Final, NoReturn

import yaml

from . import _fastyaml
from .exceptions import UndecodableMessage

__all__ = [
    "CUSTOM_CONTENT_TYPE",
    "JSON",
    "MSGPACK",
    "UNSAFE_PYTHON_YAML",
    "YAML",
    "Codec",
    "SafeYamlLoader",
    "codec_from_functions",
    "decoder_for",
]

#: Longest piece of an error text (or of a content type) quoted in an exception message.
_MAX_QUOTE: Final = 200


def _truncate(text: str, limit: int = _MAX_QUOTE) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… [{len(text) - limit} more characters]"


def _undecodable(codec_name: str, data: bytes, exc: BaseException) -> UndecodableMessage:
    """Build the :class:`UndecodableMessage` for a body that failed to decode.

    The message names the codec, the body's size and the error, never the whole body.
    """
    problem = _truncate(f"{type(exc).__name__}: {exc}")
    return UndecodableMessage(
        f"cannot decode {codec_name} message body ({len(data)} bytes): {problem}"
    )


@dataclass(frozen=True, slots=True)
class Codec:
    """How message bodies are encoded and decoded.

    Attributes:
        content_type: the MIME type sent in the ``content_type`` property of every message
            encoded with this codec, and matched against received messages by
            :func:`decoder_for`.
        encode: turns a Python value into a body. Raises :class:`TypeError` or
            :class:`ValueError` for a value it cannot represent.
        decode: turns a body back into a value. Raises
            :class:`~kiwi_anyio.exceptions.UndecodableMessage` (and nothing else) for a body
            it cannot decode.
        unsafe: ``True`` if ``decode`` may construct arbitrary Python objects (and so run
            code chosen by the sender). Such a codec may only be a communicator's configured
            codec, never one of the ``extra`` codecs a content type can select.
    """

    content_type: str
    encode: Callable[[Any], bytes]
    decode: Callable[[bytes], Any]
    unsafe: bool = False


# --------------------------------------------------------------------------- YAML (safe)

#: Types the safe YAML codec encodes. Exact types only: a subclass (an enum, an OrderedDict,
#: a str subclass...) would be written by PyYAML as a ``!!python/object…`` tag.
_YAML_SAFE_TYPES: Final[frozenset[type]] = frozenset(
    {
        type(None),
        bool,
        int,
        float,
        complex,
        str,
        bytes,
        list,
        tuple,
        dict,
        set,
        date,
        datetime,
    }
)


class _SafeYamlDumper(yaml.Dumper):
    """``yaml.Dumper`` (what ``yaml.dump`` uses) restricted to :data:`_YAML_SAFE_TYPES`.

    The representers are ``yaml.Dumper``'s own, so the output is byte-identical to
    ``yaml.dump``; the catch-all representers for other objects are replaced by one that
    raises :class:`TypeError`.
    """

    def represent_unsafe(self, data: Any) -> NoReturn:
        """Refuse a value that only an unsafe loader could rebuild."""
        cls = type(data)
        raise TypeError(
            f"the YAML codec cannot encode an object of type {cls.__module__}.{cls.__qualname__}: "
            "only None, bool, int, float, complex, str, bytes, list, tuple, dict, set, "
            "datetime.date and datetime.datetime (exact types) can be decoded safely; convert "
            "it, or use a custom codec"
        )


_SafeYamlDumper.yaml_representers = {
    **{cls: rep for cls, rep in yaml.Dumper.yaml_representers.items() if cls in _YAML_SAFE_TYPES},
    # PyYAML's fallback for every other type is the key None (the stubs only allow types).
    None: _SafeYamlDumper.represent_unsafe,  # type: ignore[dict-item]
}
_SafeYamlDumper.yaml_multi_representers = {}

#: The ``!!python/…`` tags of plain data that ``yaml.FullLoader`` accepts. Their constructors
#: build only builtin values; none imports or calls anything.
_PLAIN_PYTHON_TAGS: Final = tuple(
    f"tag:yaml.org,2002:python/{name}"
    for name in (
        "none",
        "bool",
        "int",
        "long",
        "float",
        "complex",
        "str",
        "unicode",
        "bytes",
        "list",
        "tuple",
        "dict",
    )
)


class SafeYamlLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also accepts the plain-data ``!!python/…`` tags.

    These are the tags kiwiPy's ``yaml.FullLoader`` builds without importing anything:
    ``!!python/tuple`` (every kiwiPy task body is a tuple), ``!!python/complex``,
    ``!!python/bytes``, ``!!python/str``, ``!!python/int`` and so on. Everything
    ``SafeLoader`` accepts (``!!binary``, ``!!set``, timestamps, ``!!omap``) is accepted too.
    Any tag that names a Python object (``!!python/name:``, ``!!python/object…``,
    ``!!python/module:``) is an error, as is any unknown tag.
    """


for _tag in _PLAIN_PYTHON_TAGS:
    SafeYamlLoader.add_constructor(_tag, yaml.FullLoader.yaml_constructors[_tag])

if hasattr(yaml, "CSafeLoader"):  # libyaml is available: parse in C, construct in Python

    class _CSafeYamlLoader(yaml.CSafeLoader):
        """The libyaml parser with the constructors of :class:`SafeYamlLoader`."""

    _CSafeYamlLoader.yaml_constructors = dict(SafeYamlLoader.yaml_constructors)
    _CSafeYamlLoader.yaml_multi_constructors = dict(SafeYamlLoader.yaml_multi_constructors)
    _yaml_loader: type[SafeYamlLoader] | type[_CSafeYamlLoader] = _CSafeYamlLoader
else:  # pragma: no cover - PyYAML built without libyaml
    _yaml_loader = SafeYamlLoader


def _yaml_encode_with_pyyaml(obj: Any) -> bytes:
    """``yaml.dump(obj, encoding='utf-8')`` for the safe types; :class:`TypeError` otherwise."""
    data = yaml.dump(obj, Dumper=_SafeYamlDumper, encoding="utf-8")
    assert isinstance(data, bytes)
    return data


def _yaml_encode(obj: Any) -> bytes:
    data = _fastyaml.encode(obj)
    if data is None:  # not plain data, or unusual: PyYAML writes it (or raises TypeError)
        data = _yaml_encode_with_pyyaml(obj)
    return data


def _yaml_decode_with_loader(data: bytes) -> Any:
    """Decode with the YAML loader only (libyaml when available), as before the fast path."""
    try:
        return yaml.load(data, Loader=_yaml_loader)
    except Exception as exc:  # YAMLError, ValueError (bad dates), RecursionError, ...
        raise _undecodable("YAML", data, exc) from exc


def _yaml_decode(data: bytes) -> Any:
    try:
        value = _fastyaml.decode(data)
    except Exception:  # pragma: no cover - the fast path gives up rather than raise
        value = _fastyaml.MISS
    if value is not _fastyaml.MISS:
        return value
    try:
        return yaml.load(data, Loader=_yaml_loader)
    except Exception as exc:  # YAMLError, ValueError (bad dates), RecursionError, ...
        raise _undecodable("YAML", data, exc) from exc


#: The default codec: kiwiPy's YAML wire format, decoded safely.
YAML: Final = Codec("application/yaml", _yaml_encode, _yaml_decode)

#: Content types that also name YAML (the ones in use before RFC 9512 registered
#: ``application/yaml``).
_YAML_ALIASES: Final = ("application/x-yaml", "text/yaml", "text/x-yaml")


# --------------------------------------------------------------------------- YAML (unsafe)


def _unsafe_yaml_encode(obj: Any) -> bytes:
    data = yaml.dump(obj, encoding="utf-8")
    assert isinstance(data, bytes)
    return data


def _unsafe_yaml_decode(data: bytes) -> Any:
    try:
        return yaml.load(data, Loader=yaml.UnsafeLoader)
    except Exception as exc:
        raise _undecodable("Python YAML", data, exc) from exc


#: DANGEROUS: PyYAML with full Python object construction (``yaml.UnsafeLoader``).
#:
#: Encoding is exactly kiwiPy's ``yaml.dump(obj, encoding='utf-8')``, so any object can be
#: sent. Decoding imports modules and calls functions named in the message: anyone who can
#: publish to the broker can run code in every receiver that uses this codec. Use it only on a
#: broker you trust completely, and only as a communicator's own codec (it can never be
#: selected by a message's content type). Its content type is ``application/x-python-yaml``.
UNSAFE_PYTHON_YAML: Final = Codec(
    "application/x-python-yaml", _unsafe_yaml_encode, _unsafe_yaml_decode, unsafe=True
)


# --------------------------------------------------------------------------- JSON


def _json_default(obj: Any) -> NoReturn:
    cls = type(obj)
    hint = "; use the YAML or msgpack codec for bytes" if isinstance(obj, bytes | bytearray) else ""
    raise TypeError(
        f"the JSON codec cannot encode an object of type {cls.__module__}.{cls.__qualname__}{hint}"
    )


# json.dumps/loads build a new encoder for every call with non-default options
_JSON_ENCODER: Final = json.JSONEncoder(ensure_ascii=False, allow_nan=False, default=_json_default)
_JSON_DECODER: Final = json.JSONDecoder()


def _json_encode(obj: Any) -> bytes:
    try:
        text = _JSON_ENCODER.encode(obj)
    except ValueError as exc:
        if "JSON compliant" in str(exc):  # NaN or an infinity
            raise ValueError(
                "the JSON codec cannot encode NaN or infinite floats (they are not JSON)"
            ) from exc
        raise
    return text.encode("utf-8")


def _json_decode(data: bytes) -> Any:
    try:
        if not isinstance(data, bytes | bytearray) or b"\x00" in data[:4]:
            # a str, or UTF-16/UTF-32 (which is valid UTF-8 when ASCII): json.loads
            # detects the encoding as RFC 4627 describes
            return json.loads(data)
        text = data.decode("utf-8")
        if text.startswith("\ufeff"):  # a UTF-8 byte order mark, as json.loads accepts
            text = text[1:]
        return _JSON_DECODER.decode(text)
    except Exception as exc:  # JSONDecodeError, UnicodeDecodeError, RecursionError
        raise _undecodable("JSON", data, exc) from exc


#: JSON (UTF-8). Tuples are sent as arrays and arrive as lists; bytes cannot be sent.
JSON: Final = Codec("application/json", _json_encode, _json_decode)


# --------------------------------------------------------------------------- msgpack

_MSGPACK_MISSING: Final = (
    "the msgpack codec needs the 'msgpack' package: pip install 'kiwi-anyio[msgpack]'"
)


def _import_msgpack() -> ModuleType:
    try:
        return importlib.import_module("msgpack")
    except ImportError as exc:
        raise ImportError(_MSGPACK_MISSING, name="msgpack") from exc


def _msgpack_encode(obj: Any) -> bytes:
    msgpack = _import_msgpack()
    data = msgpack.packb(obj, use_bin_type=True)
    assert isinstance(data, bytes)
    return data


def _msgpack_decode(data: bytes) -> Any:
    try:
        msgpack = _import_msgpack()
    except ImportError as exc:  # the message is undecodable here; the receiver goes on
        raise UndecodableMessage(_MSGPACK_MISSING) from exc
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception as exc:  # ExtraData, FormatError, StackError, UnicodeDecodeError, ...
        raise _undecodable("msgpack", data, exc) from exc


#: MessagePack (``use_bin_type=True``; strings decoded as UTF-8, any map key accepted).
#: Needs ``pip install 'kiwi-anyio[msgpack]'``: encoding without it raises
#: :class:`ImportError`, decoding raises :class:`UndecodableMessage`.
MSGPACK: Final = Codec("application/msgpack", _msgpack_encode, _msgpack_decode)


# --------------------------------------------------------------------------- custom codecs

#: Content type of a :func:`codec_from_functions` codec when none is given.
CUSTOM_CONTENT_TYPE: Final = "application/octet-stream"


def codec_from_functions(
    encoder: Callable[[Any], object],
    decoder: Callable[[bytes], Any],
    content_type: str | None = None,
    *,
    unsafe: bool = False,
) -> Codec:
    """Wrap kiwiPy-style ``encoder``/``decoder`` callables in a :class:`Codec`.

    kiwiPy's ``RmqCommunicator`` takes ``encoder=`` and ``decoder=``; AiiDA passes
    ``functools.partial(serialize, encoding='utf-8')`` and ``deserialize_unsafe``.

    Args:
        encoder: value → body. A ``str`` result is encoded as UTF-8; ``bytearray`` and
            ``memoryview`` results are converted to ``bytes``.
        decoder: body → value. Any exception it raises becomes
            :class:`~kiwi_anyio.exceptions.UndecodableMessage`.
        content_type: the content type to send and to recognise; defaults to
            ``application/octet-stream``. Name your format if peers use several codecs.
        unsafe: set it if ``decoder`` can construct arbitrary objects (as
            ``deserialize_unsafe`` does); the codec can then only be a communicator's own codec.

    Returns:
        The codec.
    """

    def encode(obj: Any) -> bytes:
        data: object = encoder(obj)
        if isinstance(data, bytes):
            return data
        if isinstance(data, str):
            return data.encode("utf-8")
        if isinstance(data, bytearray | memoryview):
            return bytes(data)
        raise TypeError(
            f"the encoder {encoder!r} returned {type(data).__qualname__}, not bytes or str"
        )

    def decode(data: bytes) -> Any:
        try:
            return decoder(data)
        except UndecodableMessage:
            raise
        except Exception as exc:
            raise _undecodable(f"{content_type or 'custom'}", data, exc) from exc

    return Codec(content_type or CUSTOM_CONTENT_TYPE, encode, decode, unsafe=unsafe)


# --------------------------------------------------------------------------- choosing a decoder


def _normalise(content_type: str) -> str:
    """``'Application/JSON; charset=utf-8'`` → ``'application/json'``."""
    return content_type.split(";", 1)[0].strip().lower()


#: The safe codecs any receiver accepts, by (normalised) content type.
_BUILTIN_DECODERS: Final[Mapping[str, Codec]] = {
    YAML.content_type: YAML,
    **dict.fromkeys(_YAML_ALIASES, YAML),
    # Python-object YAML from a peer is decoded safely: plain values arrive, objects fail.
    UNSAFE_PYTHON_YAML.content_type: YAML,
    JSON.content_type: JSON,
    "application/x-msgpack": MSGPACK,
    MSGPACK.content_type: MSGPACK,
}


def decoder_for(
    content_type: str | None,
    default: Codec,
    extra: Mapping[str, Codec] | None = None,
) -> Codec:
    """Pick the codec that decodes a received message.

    In order:

    1. no content type (kiwiPy sends none) → ``default``;
    2. ``default.content_type`` → ``default``;
    3. a key of ``extra`` → that codec;
    4. a built-in content type → :data:`YAML` (also for ``application/x-yaml``,
       ``text/yaml`` and ``application/x-python-yaml``), :data:`JSON` or :data:`MSGPACK`;
    5. anything else → :class:`UndecodableMessage`.

    Content types are compared without parameters and case-insensitively
    (``application/json; charset=utf-8`` is JSON).

    Only ``default``, the receiver's own choice, may be unsafe: a header never selects a
    decoder that constructs arbitrary objects. Call ``decoder_for(None, default, extra)``
    once when configuring a communicator to validate ``extra``.

    Args:
        content_type: the message's ``content_type`` property.
        default: the communicator's configured codec.
        extra: more codecs the receiver accepts, by content type.

    Returns:
        The codec to decode the body with.

    Raises:
        UndecodableMessage: the content type is not known.
        ValueError: a codec in ``extra`` is unsafe.
    """
    if extra:
        for codec in extra.values():
            if codec.unsafe:
                raise ValueError(
                    f"the codec for {codec.content_type!r} is unsafe: it may only be a "
                    "communicator's own codec, not one selected by a message's content type"
                )
    if not content_type:
        return default
    wanted = _normalise(content_type)
    if wanted == _normalise(default.content_type):
        return default
    if extra:
        for key, codec in extra.items():
            if _normalise(key) == wanted:
                return codec
    builtin = _BUILTIN_DECODERS.get(wanted)
    if builtin is None:
        raise UndecodableMessage(
            f"unknown content type {_truncate(content_type, 100)!r}: expected none, "
            f"{default.content_type!r} or one of {sorted({*(extra or {}), *_BUILTIN_DECODERS})}"
        )
    return builtin

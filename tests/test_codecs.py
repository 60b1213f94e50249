"""Tests of :mod:`kiwi_anyio.codecs`: kiwiPy value compatibility, safe decoding, codec choice.

The differential property tests of the YAML fast path are in ``test_codec_fastyaml.py``.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import enum
import functools
import json
import math
import shlex
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from kiwi_anyio.codecs import (
    CUSTOM_CONTENT_TYPE,
    JSON,
    MSGPACK,
    UNSAFE_PYTHON_YAML,
    YAML,
    Codec,
    SafeYamlLoader,
    _yaml_encode_with_pyyaml,
    codec_from_functions,
    decoder_for,
)
from kiwi_anyio.exceptions import UndecodableMessage


def kiwipy_encode(obj: Any) -> bytes:
    """kiwiPy 0.9's ``ENCODER``."""
    data = yaml.dump(obj, encoding="utf-8")
    assert isinstance(data, bytes)
    return data


def kiwipy_decode(data: bytes) -> Any:
    """kiwiPy 0.9's ``DECODER``."""
    return yaml.load(data, Loader=yaml.FullLoader)


def pure_python_decode(data: bytes) -> Any:
    """Decode with :class:`SafeYamlLoader` (pure Python) rather than the libyaml variant."""
    return yaml.load(data, Loader=SafeYamlLoader)


class Color(enum.IntEnum):
    RED = 1


class MyStr(str):
    __slots__ = ()


@dataclasses.dataclass
class Point:
    x: int
    y: int


# --------------------------------------------------------------------------- YAML: encoding

KIWIPY_EXAMPLES = [  # kiwipy.md §2.5, verified with PyYAML 6.0.3
    (("The meaning?", False), b"!!python/tuple\n- The meaning?\n- false\n"),
    ((b"RRRR", True), b"!!python/tuple\n- !!binary |\n  UlJSUg==\n- true\n"),
    (
        {"result": 42, "host": {"pid": 123, "hostname": "h1"}},
        b"host:\n  hostname: h1\n  pid: 123\nresult: 42\n",
    ),
    ({"exception": "I cannae do it Captain!"}, b"exception: I cannae do it Captain!\n"),
    ({"pending": None}, b"pending: null\n"),
    ({"cancelled": None}, b"cancelled: null\n"),
    (
        {"body": "so fat", "sender": "me", "subject": "yo momma", "correlation_id": None},
        b"body: so fat\ncorrelation_id: null\nsender: me\nsubject: yo momma\n",
    ),
    ("sup yo'", b"sup yo'\n...\n"),
    ("h\xe9llo", b'"h\\xE9llo"\n'),
]


@pytest.mark.parametrize(("value", "wire"), KIWIPY_EXAMPLES)
def test_yaml_encodes_kiwipys_examples(value: Any, wire: bytes) -> None:
    # the same value with the same types, not the same bytes (the fast path writes flow style)
    decoded = kiwipy_decode(YAML.encode(value))
    assert decoded == value
    assert type(decoded) is type(value)
    # the PyYAML fallback is still byte-identical to kiwiPy
    assert _yaml_encode_with_pyyaml(value) == wire
    assert kiwipy_encode(value) == wire


@pytest.mark.parametrize(("value", "wire"), KIWIPY_EXAMPLES)
def test_yaml_decodes_kiwipys_examples(value: Any, wire: bytes) -> None:
    assert YAML.decode(wire) == value
    assert pure_python_decode(wire) == value
    assert type(YAML.decode(wire)) is type(value)


def _recursive_list() -> list[Any]:
    items: list[Any] = [1]
    items.append(items)
    return items


SAFE_VALUES: list[Any] = [
    None,
    True,
    0,
    -(10**30),
    1.5,
    float("inf"),
    float("nan"),
    -0.0,
    1j,
    "",
    "no",  # a YAML 1.1 boolean: must stay quoted
    "on",
    "123",
    "null",
    "multi\nline\n",
    "tab\there",
    "\u2028 \x85 \ufeff",
    "日本語",
    b"",
    bytes(range(256)),
    [],
    (),
    (1,),
    {},
    {3: "c", 1: "a", 2: "b"},
    {"b": 1, 2: "mixed keys cannot be sorted"},
    {("tuple", "key"): 1},
    {1, 2, 3},
    set(),
    datetime.date(2024, 2, 29),
    datetime.datetime(2024, 2, 29, 12, 30, 1, 123456),
    datetime.datetime(2024, 2, 29, 12, 30, tzinfo=datetime.UTC),
    {"nested": [(1, b"x", {"deep": ({"a": None},)})]},
    _recursive_list(),
]


@pytest.mark.parametrize("value", SAFE_VALUES, ids=repr)
def test_yaml_encode_decodes_like_kiwipys_encoding(value: Any) -> None:
    # kiwiPy's decoder reads what we send as it reads what kiwiPy itself sends
    assert repr(kiwipy_decode(YAML.encode(value))) == repr(kiwipy_decode(kiwipy_encode(value)))


@pytest.mark.parametrize("value", SAFE_VALUES, ids=repr)
def test_yaml_pyyaml_fallback_is_byte_identical_to_kiwipy(value: Any) -> None:
    assert _yaml_encode_with_pyyaml(value) == kiwipy_encode(value)


@pytest.mark.parametrize("value", SAFE_VALUES, ids=repr)
def test_yaml_decodes_like_kiwipy(value: Any) -> None:
    wire = kiwipy_encode(value)
    expected = kiwipy_decode(wire)
    assert repr(YAML.decode(wire)) == repr(expected)
    assert repr(pure_python_decode(wire)) == repr(expected)


@pytest.mark.parametrize(
    "value",
    [
        object(),
        Point(1, 2),
        Color.RED,
        MyStr("subclass"),
        collections.OrderedDict(a=1),
        frozenset({1}),
        bytearray(b"x"),
        len,
        Path,
        sys,
        datetime.time(12),
        [1, {"deep": object()}],
    ],
    ids=repr,
)
def test_yaml_refuses_objects_with_a_clear_type_error(value: Any) -> None:
    with pytest.raises(TypeError, match="the YAML codec cannot encode an object of type"):
        YAML.encode(value)


def test_yaml_type_error_names_the_type() -> None:
    with pytest.raises(TypeError, match=r"test_codecs\.Point: "):
        YAML.encode({"p": Point(1, 2)})


def test_kiwipy_style_task_body_list_decodes() -> None:
    assert YAML.decode(b"- task\n- false\n") == ["task", False]


@pytest.mark.parametrize(
    ("wire", "expected"),
    [
        (b"!!python/tuple [1, 2]", (1, 2)),
        (b"!!python/complex 1+2j", 1 + 2j),
        (b"!!python/str abc", "abc"),
        (b"!!python/unicode abc", "abc"),
        (b"!!python/bytes YWJj", b"abc"),
        (b"!!python/int '7'", 7),
        (b"!!python/long '7'", 7),
        (b"!!python/float '1.5'", 1.5),
        (b"!!python/bool 'true'", True),
        (b"!!python/none ''", None),
        (b"!!python/list [1]", [1]),
        (b"!!python/dict {a: 1}", {"a": 1}),
        (b"!!set {a, b}", {"a", "b"}),
        (b"!!binary YWJj", b"abc"),
        (b"!!omap [a: 1, b: 2]", [("a", 1), ("b", 2)]),
        (b"2001-12-14", datetime.date(2001, 12, 14)),
        (b"", None),
    ],
)
def test_yaml_accepts_fullloaders_plain_data_tags(wire: bytes, expected: Any) -> None:
    assert YAML.decode(wire) == expected
    assert pure_python_decode(wire) == expected
    assert kiwipy_decode(wire) == expected


# --------------------------------------------------------------------------- YAML: safety


def _canary_payloads(canary: Path) -> list[bytes]:
    command = json.dumps(f"touch {shlex.quote(str(canary))}")
    path = json.dumps(str(canary))
    return [
        f"!!python/object/apply:os.system [{command}]".encode(),
        f"!!python/object/apply:subprocess.call [[touch, {path}]]".encode(),
        f"!!python/object/new:subprocess.Popen [[touch, {path}]]".encode(),
        f"!!python/object/apply:builtins.open [{path}, w]".encode(),
        f"x: !!python/object/apply:os.system [{command}]".encode(),
        f"- !!python/tuple [!!python/object/apply:os.system [{command}]]".encode(),
    ]


def test_canary_control_the_unsafe_codec_does_run_the_payload(tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    UNSAFE_PYTHON_YAML.decode(_canary_payloads(canary)[0])
    assert canary.exists()


@pytest.mark.parametrize("index", range(len(_canary_payloads(Path("x")))))
def test_yaml_never_runs_code(tmp_path: Path, index: int) -> None:
    canary = tmp_path / "canary"
    payload = _canary_payloads(canary)[index]
    with pytest.raises(UndecodableMessage, match="could not determine a constructor"):
        YAML.decode(payload)
    with pytest.raises(yaml.constructor.ConstructorError):
        pure_python_decode(payload)
    assert not canary.exists()


@pytest.mark.parametrize(
    "wire",
    [
        b"!!python/name:os.system",  # kiwiPy's FullLoader resolves this one
        b"!!python/name:os.system ''",
        b"!!python/module:os",
        b"!!python/object:tests.test_codecs.Point {x: 1, y: 2}",
        b"!!python/object/new:tests.test_codecs.Point [1, 2]",
        b"!!python/object/apply:tests.test_codecs.Point [1, 2]",
        b"!!python/object:collections.OrderedDict {}",
        b"!custom 1",
        b"!<tag:example.com,2000:app/foo> 1",
    ],
)
def test_yaml_refuses_object_tags(wire: bytes) -> None:
    with pytest.raises(UndecodableMessage, match="could not determine a constructor"):
        YAML.decode(wire)


def test_kiwipys_fullloader_really_resolves_python_name() -> None:
    # Why the decoder is not kiwiPy's: FullLoader hands out any importable function.
    import os

    assert kiwipy_decode(b"!!python/name:os.system") is os.system


@pytest.mark.parametrize(
    "wire",
    [
        b"\xff\xfe\x00",  # broken UTF-16
        b"\x80abc",  # not UTF-8
        b"a: b: c",
        b"[1, 2",
        b"a\n---\nb\n",  # two documents
        b"\x00",
        b"[" * 100_000,
        b"- " * 100_000 + b"x",
        b"2001-13-45",  # matches the timestamp pattern, invalid date
        b"!!int " + b"9" * 10_000,  # over Python's int string limit
        b"{!!python/tuple [[1]]: 1}",  # unhashable key
        b"&a !!python/tuple [*a]",  # recursive tuple
        b"!!binary 'a'",  # bad base64 padding
        b"!!python/complex 'not a number'",
        b"!!set [1]",
        b"*undefined_alias",
    ],
)
def test_yaml_decode_errors_are_undecodable_message(wire: bytes) -> None:
    with pytest.raises(UndecodableMessage, match=r"cannot decode YAML message body"):
        YAML.decode(wire)


def test_error_messages_never_dump_huge_bodies() -> None:
    wire = b"!!python/name:" + b"a" * 1_000_000
    with pytest.raises(UndecodableMessage) as info:
        YAML.decode(wire)
    message = str(info.value)
    assert len(message) < 600
    assert "1000014 bytes" in message
    assert "more characters" in message
    assert isinstance(info.value.__cause__, yaml.YAMLError)


# --------------------------------------------------------------------------- YAML: properties

_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text()
    | st.binary()
    | st.datetimes()
    | st.dates()
)
_keys = st.text() | st.integers() | st.tuples(st.text(), st.integers())
_values = st.recursive(
    _scalars,
    lambda children: (
        st.lists(children, max_size=5)
        | st.lists(children, max_size=5).map(tuple)
        | st.dictionaries(_keys, children, max_size=5)
        | st.frozensets(st.integers() | st.text(), max_size=5).map(set)
    ),
    max_leaves=20,
)


def assert_same(actual: Any, expected: Any) -> None:
    """Equal, with the same types all the way down (``True`` is not ``1``, a tuple no list)."""
    assert type(actual) is type(expected), (actual, expected)
    if isinstance(expected, dict):
        assert actual.keys() == expected.keys()
        for key, value in expected.items():
            assert_same(actual[key], value)
    elif isinstance(expected, list | tuple):
        assert len(actual) == len(expected)
        for a, e in zip(actual, expected, strict=True):
            assert_same(a, e)
    else:
        assert actual == expected


@settings(deadline=None)
@given(_values)
def test_yaml_round_trip(value: Any) -> None:
    wire = YAML.encode(value)
    assert_same(YAML.decode(wire), value)
    assert_same(pure_python_decode(wire), value)
    assert_same(kiwipy_decode(wire), value)


@settings(deadline=None)
@given(
    _values | st.recursive(_scalars | st.floats() | st.complex_numbers(), st.lists, max_leaves=10)
)
def test_yaml_encode_decodes_like_yaml_dump(value: Any) -> None:
    def outcome(wire: bytes) -> str:
        try:
            return repr(kiwipy_decode(wire))
        except ValueError as exc:  # e.g. complex(1, nan): PyYAML writes '1.0nanj'
            return f"{type(exc).__name__}: {exc}"

    assert outcome(YAML.encode(value)) == outcome(kiwipy_encode(value))
    assert _yaml_encode_with_pyyaml(value) == kiwipy_encode(value)


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")  # lone surrogates too: still not UTF-8


_yamlish = st.text(
    alphabet=st.sampled_from(list(" -:?,[]{}!&*|>'\"#%@`\n\t.0123456789abcxyz")) | st.characters(),
    max_size=60,
)
_tagged = st.builds(
    lambda tag, body: f"{tag} {body}",
    st.sampled_from(
        [
            "!!python/tuple",
            "!!python/name:os.system",
            "!!python/object/apply:os.getcwd",
            "!!binary",
            "!!set",
            "!!omap",
            "!!timestamp",
            "!!int",
            "!!float",
            "!!python/complex",
            "!!python/bytes",
            "!foo",
        ]
    ),
    _yamlish,
)


@settings(deadline=None, max_examples=300)
@given(st.binary() | _yamlish.map(_utf8) | _tagged.map(_utf8))
def test_yaml_decode_raises_only_undecodable_message(data: bytes) -> None:
    try:
        YAML.decode(data)
    except UndecodableMessage:
        pass


@settings(deadline=None)
@given(st.text())
def test_yaml_decode_of_random_text_raises_only_undecodable_message(text: str) -> None:
    try:
        YAML.decode(_utf8(text))
    except UndecodableMessage:
        pass


# --------------------------------------------------------------------------- unsafe YAML


def test_unsafe_python_yaml_is_kiwipys_format_with_objects() -> None:
    value = {"point": Point(1, 2), "color": Color.RED, "items": (1, b"x")}
    wire = UNSAFE_PYTHON_YAML.encode(value)
    assert wire == kiwipy_encode(value)
    assert UNSAFE_PYTHON_YAML.decode(wire) == value
    assert UNSAFE_PYTHON_YAML.unsafe
    assert UNSAFE_PYTHON_YAML.content_type == "application/x-python-yaml"
    with pytest.raises(UndecodableMessage):
        YAML.decode(wire)


def test_unsafe_python_yaml_decode_errors_are_undecodable_message() -> None:
    with pytest.raises(UndecodableMessage):
        UNSAFE_PYTHON_YAML.decode(b"[1, 2")
    with pytest.raises(UndecodableMessage):
        UNSAFE_PYTHON_YAML.decode(b"!!python/name:no_such_module.thing")


# --------------------------------------------------------------------------- JSON


def test_json() -> None:
    assert JSON.content_type == "application/json"
    assert not JSON.unsafe
    assert JSON.encode({"a": (1, "é", None, True)}) == '{"a": [1, "é", null, true]}'.encode()
    assert JSON.decode(JSON.encode({"a": (1, 2)})) == {"a": [1, 2]}
    assert JSON.decode(b'"\xc3\xa9"') == "é"


@pytest.mark.parametrize("value", [b"x", {"k": b"x"}, {1, 2}, Point(1, 2), 1j])
def test_json_refuses_non_json_values(value: Any) -> None:
    with pytest.raises(TypeError, match="the JSON codec cannot encode an object of type"):
        JSON.encode(value)


def test_json_bytes_error_suggests_another_codec() -> None:
    with pytest.raises(TypeError, match=r"builtins\.bytes; use the YAML or msgpack codec"):
        JSON.encode([b"x"])


@pytest.mark.parametrize("value", [math.nan, math.inf, [-math.inf]])
def test_json_refuses_nan_and_infinity(value: Any) -> None:
    with pytest.raises(ValueError, match="NaN or infinite"):
        JSON.encode(value)


@pytest.mark.parametrize("wire", [b"", b"{", b"\xff", b"[" * 100_000, b"1 2", b"nope"])
def test_json_decode_errors(wire: bytes) -> None:
    with pytest.raises(UndecodableMessage, match="cannot decode JSON message body"):
        JSON.decode(wire)


@settings(deadline=None)
@given(st.binary() | st.text().map(str.encode))
def test_json_decode_raises_only_undecodable_message(data: bytes) -> None:
    try:
        JSON.decode(data)
    except UndecodableMessage:
        pass


# --------------------------------------------------------------------------- msgpack


def test_msgpack() -> None:
    assert MSGPACK.content_type == "application/msgpack"
    value = {"a": (1, b"\x00", "é", None, 1.5), 7: [True]}
    assert MSGPACK.decode(MSGPACK.encode(value)) == {"a": [1, b"\x00", "é", None, 1.5], 7: [True]}


def test_msgpack_refuses_unknown_types() -> None:
    with pytest.raises(TypeError):
        MSGPACK.encode({1, 2})


@pytest.mark.parametrize("wire", [b"", b"\xc1", b"\x92\x01", b"\x01\x02", b"\xa2\xff\xfe"])
def test_msgpack_decode_errors(wire: bytes) -> None:
    with pytest.raises(UndecodableMessage, match="cannot decode msgpack message body"):
        MSGPACK.decode(wire)


@settings(deadline=None)
@given(st.binary())
def test_msgpack_decode_raises_only_undecodable_message(data: bytes) -> None:
    try:
        MSGPACK.decode(data)
    except UndecodableMessage:
        pass


def test_msgpack_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "msgpack", None)  # makes ``import msgpack`` fail
    with pytest.raises(ImportError, match=r"pip install 'kiwi-anyio\[msgpack\]'"):
        MSGPACK.encode(1)
    with pytest.raises(UndecodableMessage, match=r"kiwi-anyio\[msgpack\]"):
        MSGPACK.decode(b"\x01")


# --------------------------------------------------------------------------- custom codecs


def test_codec_is_a_frozen_dataclass() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        YAML.content_type = "x"  # type: ignore[misc]
    assert not hasattr(YAML, "__dict__")
    assert Codec(YAML.content_type, YAML.encode, YAML.decode) == YAML


def test_codec_from_kiwipy_functions() -> None:
    codec = codec_from_functions(
        functools.partial(yaml.dump, encoding="utf-8"),
        functools.partial(yaml.load, Loader=yaml.FullLoader),
    )
    assert codec.content_type == CUSTOM_CONTENT_TYPE == "application/octet-stream"
    assert not codec.unsafe
    assert codec.encode(("task", False)) == b"!!python/tuple\n- task\n- false\n"
    assert codec.decode(b"!!python/tuple\n- task\n- false\n") == ("task", False)
    with pytest.raises(UndecodableMessage, match="cannot decode custom message body"):
        codec.decode(b"[1, 2")


def test_codec_from_functions_converts_results() -> None:
    as_str = codec_from_functions(yaml.dump, yaml.safe_load, "application/x-mine", unsafe=True)
    assert as_str.content_type == "application/x-mine"
    assert as_str.unsafe
    assert as_str.encode({"é": 1}) == yaml.dump({"é": 1}).encode()
    assert codec_from_functions(bytearray, bytes).encode(b"ab") == b"ab"
    assert codec_from_functions(memoryview, bytes).encode(b"ab") == b"ab"
    with pytest.raises(TypeError, match="returned int, not bytes or str"):
        codec_from_functions(len, bytes).encode("abc")


def test_codec_from_functions_keeps_undecodable_message() -> None:
    def decoder(data: bytes) -> Any:
        raise UndecodableMessage("mine")

    with pytest.raises(UndecodableMessage, match=r"^mine$"):
        codec_from_functions(bytes, decoder).decode(b"")


# --------------------------------------------------------------------------- decoder_for

CUSTOM = codec_from_functions(bytes, bytes, "application/x-custom")
AIIDA_LIKE = codec_from_functions(bytes, bytes, unsafe=True)


@pytest.mark.parametrize("default", [YAML, JSON, UNSAFE_PYTHON_YAML, AIIDA_LIKE])
def test_no_content_type_uses_the_configured_codec(default: Codec) -> None:
    # kiwiPy sends no content_type
    assert decoder_for(None, default) is default
    assert decoder_for("", default) is default


@pytest.mark.parametrize("default", [YAML, JSON, MSGPACK, UNSAFE_PYTHON_YAML, AIIDA_LIKE, CUSTOM])
def test_own_content_type_uses_the_configured_codec(default: Codec) -> None:
    assert decoder_for(default.content_type, default) is default
    assert decoder_for(default.content_type.upper() + "; charset=utf-8", default) is default


@pytest.mark.parametrize(
    ("content_type", "codec"),
    [
        ("application/yaml", YAML),
        ("application/x-yaml", YAML),
        ("text/yaml", YAML),
        ("text/x-yaml", YAML),
        ("application/json", JSON),
        ("Application/JSON; charset=utf-8", JSON),
        ("application/msgpack", MSGPACK),
        ("application/x-msgpack", MSGPACK),
        # Python-object YAML from a peer is decoded safely unless the receiver chose otherwise.
        ("application/x-python-yaml", YAML),
    ],
)
@pytest.mark.parametrize("default", [YAML, JSON, AIIDA_LIKE, CUSTOM])
def test_builtin_content_types_select_safe_codecs(
    content_type: str, codec: Codec, default: Codec
) -> None:
    expected = default if content_type == default.content_type else codec
    chosen = decoder_for(content_type, default)
    assert chosen is expected
    assert not chosen.unsafe or chosen is default


def test_a_header_never_upgrades_to_unsafe(tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    payload = _canary_payloads(canary)[0]
    for content_type in [None, "application/x-python-yaml", "application/yaml"]:
        codec = decoder_for(content_type, YAML)
        assert not codec.unsafe
        with pytest.raises(UndecodableMessage):
            codec.decode(payload)
    assert not canary.exists()
    # Only a receiver that configured the unsafe codec gets it.
    assert decoder_for("application/x-python-yaml", UNSAFE_PYTHON_YAML) is UNSAFE_PYTHON_YAML
    assert decoder_for("application/yaml", UNSAFE_PYTHON_YAML) is YAML


def test_unknown_content_type() -> None:
    with pytest.raises(UndecodableMessage, match="unknown content type 'application/xml'"):
        decoder_for("application/xml", YAML)
    with pytest.raises(UndecodableMessage) as info:
        decoder_for("x" * 10_000, YAML)
    assert len(str(info.value)) < 1000


def test_extra_codecs() -> None:
    extra = {"Application/X-Custom": CUSTOM}
    assert decoder_for("application/x-custom", YAML, extra) is CUSTOM
    assert decoder_for(None, YAML, extra) is YAML
    assert decoder_for("application/json", YAML, extra) is JSON
    my_json = codec_from_functions(bytes, json.loads, "application/json")
    assert decoder_for("application/json", YAML, {"application/json": my_json}) is my_json
    with pytest.raises(UndecodableMessage):
        decoder_for("application/x-custom", YAML)


def test_extra_codecs_must_be_safe() -> None:
    for unsafe in [UNSAFE_PYTHON_YAML, AIIDA_LIKE]:
        with pytest.raises(ValueError, match="unsafe"):
            decoder_for(None, YAML, {unsafe.content_type: unsafe})


@pytest.mark.parametrize(
    "encoding", ["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le"]
)
def test_json_decodes_every_encoding_json_loads_accepts(encoding: str) -> None:
    """RFC 4627 JSON may be UTF-16 or UTF-32 (with or without a byte order mark); plain
    ASCII in those is also valid UTF-8, so the decoder must not take it for UTF-8."""
    value = {"a": [1, 2.5, None, "é", "x" * 3], "b": {"c": True}}
    wire = json.dumps(value, ensure_ascii=False).encode(encoding)
    assert JSON.decode(wire) == json.loads(wire) == value

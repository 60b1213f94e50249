"""Differential property tests of the default YAML codec's fast path (``kiwi_anyio._fastyaml``).

Both directions, against PyYAML's own loaders:

* what :data:`~kiwi_anyio.codecs.YAML` sends reads back with kiwiPy's decoder
  (``yaml.load(body, Loader=yaml.FullLoader)``) as the value sent, with the same types, and
  exactly as kiwiPy's decoder reads ``yaml.dump`` of the same value (keys in the same order);
* whatever it receives (kiwiPy's ``yaml.dump`` output, its own output, JSON-like documents
  full of YAML 1.1 hazards, random bytes) decodes exactly as the YAML loader alone decodes it,
  which is how every body was decoded before the fast path (or both raise
  :class:`UndecodableMessage`);
* a real kiwiPy process (``.venv-kiwipy``, with its own PyYAML) reads a batch of our encodings
  as the values sent.
"""

from __future__ import annotations

import base64
import datetime
import json
import math
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from kiwi_anyio import _fastyaml
from kiwi_anyio.codecs import (
    YAML,
    _yaml_decode_with_loader,
    _yaml_encode_with_pyyaml,
)
from kiwi_anyio.exceptions import UndecodableMessage

SETTINGS = settings(deadline=None, max_examples=150, suppress_health_check=[HealthCheck.too_slow])


def kiwipy_encode(obj: Any) -> bytes:
    """kiwiPy 0.9's ``ENCODER``."""
    data = yaml.dump(obj, encoding="utf-8")
    assert isinstance(data, bytes)
    return data


def kiwipy_decode(data: bytes) -> Any:
    """kiwiPy 0.9's ``DECODER``."""
    return yaml.load(data, Loader=yaml.FullLoader)


def assert_same(actual: Any, expected: Any, *, order: bool = False) -> None:
    """Equal with the same types all the way down; NaN equals NaN, -0.0 is not 0.0.

    With ``order``, mappings must also list their keys in the same order.
    """
    assert type(actual) is type(expected), (actual, expected)
    if isinstance(expected, float):
        assert (math.isnan(actual) and math.isnan(expected)) or (
            actual == expected and math.copysign(1, actual) == math.copysign(1, expected)
        ), (actual, expected)
    elif isinstance(expected, complex):
        assert_same(actual.real, expected.real)
        assert_same(actual.imag, expected.imag)
    elif isinstance(expected, dict):
        assert actual.keys() == expected.keys(), (actual, expected)
        if order:
            assert list(actual) == list(expected), (actual, expected)
        for key, value in expected.items():
            assert_same(actual[key], value, order=order)
    elif isinstance(expected, list | tuple):
        assert len(actual) == len(expected)
        for a, e in zip(actual, expected, strict=True):
            assert_same(a, e, order=order)
    else:
        assert actual == expected, (actual, expected)


def outcome(decode: Any, data: bytes) -> tuple[str, Any]:
    """``('ok', value)`` or ``('error', exception type)``."""
    try:
        return ("ok", decode(data))
    except (UndecodableMessage, yaml.YAMLError, ValueError) as exc:
        return ("error", type(exc).__name__)


def assert_same_outcome(actual: tuple[str, Any], expected: tuple[str, Any]) -> None:
    assert actual[0] == expected[0], (actual, expected)
    if actual[0] == "ok":
        assert_same(actual[1], expected[1], order=True)


# --------------------------------------------------------------------------- strategies

#: Strings YAML 1.1 would read as something else if written plain, and characters it reads
#: differently from JSON (line breaks, non-printables, byte order mark, surrogates).
HAZARD_WORDS = [
    "yes", "no", "on", "off", "y", "n", "Yes", "NO", "true", "False", "~", "null", "Null",
    "", " ", "0o17", "017", "0x1f", "0b101", "1e5", "1E5", "1.5e5", "1.0e+5", "1_000",
    "1:20", "190:20:30", ".inf", "-.inf", ".nan", "NaN", "Infinity", "-0", "+1", "2024-01-01",
    "2001-12-14t21:59:43.10-05:00", "=", "<<", ": ", "a: b", "#", " #x", "- ", "-", "? ", "?",
    "[", "]", "{", "}", ",", "&a", "*a", "!", "!!python/tuple", "|", ">", "%", "@", "`", "'",
    '"', "\\", "\\u2028", "\\x85", "---", "...", "--- x", " lead", "trail ", "\ttab", "a\tb",
    "\n", "\r\n", "a\nb", "\x85", "\u2028", "\u2029", "\ufeff", "\ufffe", "\uffff", "\x7f",
    "\x80", "\x9f", "\x00", "\x1b", "\ud800", "\udfff", "\ud83d\ude00", "\U0001f600",
    "日本語", "é", "x" * 2000, "y" * 1030,
]  # fmt: skip
HAZARD_CHARS = (
    " -:?,[]{}!&*|>'\"#%@`\\\n\r\t.0123456789eE+_abxyz~"
    "\x00\x01\x07\x08\x0b\x0c\x1b\x1f\x7f\x80\x84\x85\x86\x9f\xa0"
    "\u2028\u2029\ufeff\ufffe\uffff\ud800\udbff\udc00\udfff\U0001f600\U0010ffff"
)
hazard_text = (
    st.sampled_from(HAZARD_WORDS)
    | st.text(alphabet=st.sampled_from(list(HAZARD_CHARS)), max_size=20)
    | st.text(max_size=20)
    | st.builds(lambda a, b: a + b, st.sampled_from(HAZARD_WORDS), st.sampled_from(HAZARD_WORDS))
)
floats = st.floats() | st.sampled_from(
    [1e16, 1e15, 9999999999999998.0, 1e-4, 1e-5, 5e-324, 1.7976931348623157e308, -0.0, 0.0]
)
ints = st.integers() | st.sampled_from([0, -1, 2**63, -(2**64), 10**100])
scalars = (
    st.none()
    | st.booleans()
    | ints
    | floats
    | st.complex_numbers()
    | hazard_text
    | st.binary(max_size=20)
    | st.dates()
    | st.datetimes()
    | st.datetimes(
        timezones=st.sampled_from([datetime.UTC, datetime.timezone(-datetime.timedelta(hours=5))])
    )
)
hashable_keys = hazard_text | ints | st.booleans() | st.none() | floats
keys = hashable_keys | st.tuples(hazard_text, ints)
values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.lists(children, max_size=4).map(tuple)
        | st.dictionaries(keys, children, max_size=4)
        | st.dictionaries(st.text(max_size=8), children, max_size=4)
        | st.frozensets(hashable_keys, max_size=4).map(set)
    ),
    max_leaves=12,
)
#: The bodies kiwi_anyio itself sends: tasks, replies, broadcasts, RPC messages.
envelopes = values | st.tuples(values, st.booleans()) | st.builds(lambda v: {"result": v}, values)


def _roundtrips_in_pyyaml(value: Any) -> bool:
    """PyYAML itself reads ``yaml.dump(value)`` back as ``value`` (e.g. not for complex with a
    NaN imaginary part, written ``1.0nanj``, or lone surrogates for libyaml)."""
    try:
        assert_same(kiwipy_decode(kiwipy_encode(value)), value)
    except (AssertionError, ValueError, yaml.YAMLError):
        return False
    return True


# --------------------------------------------------------------------------- what we send


@SETTINGS
@given(envelopes)
@example({"i": 1, "p": "x" * 64})
@example(({"i": 1, "p": "x" * 64}, False))
@example({"a": 1e16, "b": float("nan"), "c": -float("inf"), "d": 1e-5})
@example({"\u2028": "\x85\ufeff\x7f", "k" * 161: 1, "k" * 2000: 2})
@example([[1] * 3] * 2)  # a list inside a list twice: PyYAML writes an anchor
@example({1: "a", None: "b", False: "c", 2.5: "d", "x": "e"})
@example({("tuple", 1): 1})
def test_kiwipys_decoder_reads_what_we_send_as_it_reads_yaml_dump(value: Any) -> None:
    wire = YAML.encode(value)
    assert_same_outcome(outcome(kiwipy_decode, wire), outcome(kiwipy_decode, kiwipy_encode(value)))
    if _roundtrips_in_pyyaml(value):
        assert_same(kiwipy_decode(wire), value)


@SETTINGS
@given(envelopes)
def test_our_decoder_reads_what_we_send_as_the_yaml_loader_does(value: Any) -> None:
    wire = YAML.encode(value)
    assert_same_outcome(outcome(YAML.decode, wire), outcome(_yaml_decode_with_loader, wire))


@SETTINGS
@given(envelopes)
def test_the_pyyaml_fallback_is_byte_identical_to_kiwipy(value: Any) -> None:
    assert _yaml_encode_with_pyyaml(value) == kiwipy_encode(value)


def test_plain_data_takes_the_fast_path() -> None:
    for value in [
        {"i": 1, "p": "x" * 64},
        ({"i": 1, "p": "x" * 64}, False),
        {"result": {"i": 1}},
        [1.5, "é", None, True, {"k": [1, 2]}],
        (b"x", {1, 2}, 1j, datetime.date(2024, 1, 1)),
        {"\u2028": 1e16},
    ]:
        wire = _fastyaml.encode(value)
        assert wire is not None, value
        assert b"\n" not in wire  # one line
        assert_same(kiwipy_decode(wire), value)


@pytest.mark.parametrize(
    "value",
    [
        [[[1]]] * 2,  # a shared container of containers: PyYAML writes an anchor
        {("t", 1): 1},  # a tuple key: PyYAML writes an explicit key
        {"k" * 2000: 1},  # over YAML's 1024-character implicit key limit
        {10**1100: 1},  # an int key over the limit too
        [10**5000],  # over Python's int-to-text limit: PyYAML raises the same ValueError
    ],
    ids=["shared", "tuple-key", "long-str-key", "long-int-key", "huge-int"],
)
def test_unusual_values_go_to_pyyaml(value: Any) -> None:
    if isinstance(value, list) and isinstance(value[0], int):
        assert _fastyaml.encode(value) is None
        with pytest.raises(ValueError, match="integer string conversion"):
            YAML.encode(value)
        return
    assert _fastyaml.encode(value) is None
    assert YAML.encode(value) == kiwipy_encode(value)


def test_shared_lists_of_atoms_are_written_twice() -> None:
    leaf = [1, "x"]
    value = {"a": leaf, "b": leaf}
    assert _fastyaml.encode(value) == b'{"a": [1, "x"], "b": [1, "x"]}'
    assert_same(kiwipy_decode(YAML.encode(value)), value)


def test_deep_nesting_goes_to_pyyaml() -> None:
    value: Any = 1
    for _ in range(_fastyaml.MAX_DEPTH + 2):
        value = [value]
    assert _fastyaml.encode(value) is None
    assert YAML.encode(value) == kiwipy_encode(value)


def test_cycles_go_to_pyyaml() -> None:
    items: list[Any] = [1]
    items.append(items)
    assert _fastyaml.encode(items) is None
    assert YAML.encode(items) == kiwipy_encode(items)


def test_lone_surrogates_are_kept_as_today() -> None:
    # Today: written as a \uD800 escape; kiwiPy's pure-Python FullLoader reads it back, libyaml
    # (our decoder) refuses it. Both still hold.
    wire = YAML.encode({"s": "a\ud800b"})
    assert kiwipy_decode(wire) == {"s": "a\ud800b"}
    with pytest.raises(UndecodableMessage):
        YAML.decode(wire)
    with pytest.raises(UndecodableMessage):
        YAML.decode(kiwipy_encode({"s": "a\ud800b"}))


def test_large_plain_bodies_are_fast_path_both_ways() -> None:
    value = [{"i": i, "p": "x" * 64} for i in range(20_000)]
    wire = _fastyaml.encode(value)
    assert wire is not None
    assert _fastyaml.decode(wire) == value
    assert kiwipy_decode(wire) == value
    # no mapping, so no key to check: a long string with runs of spaces is still JSON
    text = ["  " * 100 + "x" * 5000]
    assert _fastyaml.decode(YAML.encode(text)) == text


# --------------------------------------------------------------------------- what we receive


@SETTINGS
@given(values)
def test_what_kiwipy_sends_decodes_exactly_as_before(value: Any) -> None:
    wire = kiwipy_encode(value)
    assert_same_outcome(outcome(YAML.decode, wire), outcome(_yaml_decode_with_loader, wire))


json_scalars = (
    st.none()
    | st.booleans()
    | ints
    | floats
    | hazard_text
    | st.sampled_from(["1e5", "1E+5", "1.5e5", "1.5E-5", "-0", "-0.0", "NaN", "Infinity"])
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(hazard_text | st.text(max_size=3), children, max_size=4)
    ),
    max_leaves=10,
)


def _json_text(value: Any, ensure_ascii: bool, compact: bool, indent: bool) -> str:
    return json.dumps(
        value,
        ensure_ascii=ensure_ascii,
        separators=(",", ":") if compact else None,
        indent=2 if indent else None,
    )


#: Raw number tokens as a JSON document may spell them (YAML 1.1 reads several as strings).
NUMBER_TOKENS = ["1e5", "1E5", "1e+5", "1.5e5", "1.5e+5", "1.5E-05", "-0", "-0.0", "0.5",
                 "10", "1.0e+400", "123456789012345678901234567890", "NaN", "Infinity",
                 "-Infinity"]  # fmt: skip


@SETTINGS
@given(
    json_values,
    st.booleans(),
    st.booleans(),
    st.booleans(),
    st.sampled_from(["", "\n", " ", "  \n", "\n\n", "\t"]),
    st.sampled_from(["", "!!python/tuple ", "!!python/tuple", "--- ", " "]),
    st.lists(st.sampled_from(NUMBER_TOKENS), max_size=3),
)
@example({"k" * 1030: 1}, False, False, False, "\n", "", [])
@example({"a": "b"}, False, False, False, "\n", "", ["1e5"])
def test_json_like_documents_decode_exactly_as_the_yaml_loader_decodes_them(
    value: Any,
    ensure_ascii: bool,
    compact: bool,
    indent: bool,
    tail: str,
    head: str,
    numbers: list[str],
) -> None:
    text = _json_text(value, ensure_ascii, compact, indent)
    if numbers:  # splice raw number tokens into an array
        text = "[" + ", ".join([text, *numbers]) + "]"
    if head.startswith("!!python/tuple") and not text.startswith("["):
        text = "[" + text + "]"
    data = (head + text + tail).encode("utf-8", "surrogatepass")  # lone surrogates: not UTF-8
    assert_same_outcome(outcome(YAML.decode, data), outcome(_yaml_decode_with_loader, data))


@settings(deadline=None, max_examples=300)
@given(
    st.binary(max_size=40).map(lambda b: b"[" + b) | st.binary(max_size=40).map(lambda b: b'{"' + b)
)
def test_random_bytes_after_a_json_start_decode_as_before(data: bytes) -> None:
    assert_same_outcome(outcome(YAML.decode, data), outcome(_yaml_decode_with_loader, data))


@settings(deadline=None, max_examples=200)
@given(
    st.binary(max_size=30).map(lambda b: base64.b64encode(b))
    | st.text(alphabet='AYWQ+/=a b\\"\n', max_size=12).map(str.encode),
    st.sampled_from([b"", b"\n", b" ", b"\n...\n"]),
)
@example(b"YQ", b"")  # bad padding: an error both ways
def test_binary_bodies_decode_as_before(text: bytes, tail: bytes) -> None:
    data = b'!!binary "' + text + b'"' + tail
    assert_same_outcome(outcome(YAML.decode, data), outcome(_yaml_decode_with_loader, data))


@pytest.mark.parametrize(
    "data",
    [
        b'{"a": 1e5}',  # a string in YAML 1.1
        b'{"a": 1.5e5}',
        b'{"a": NaN}',
        b'["\\ud83d\\ude00"]',  # a surrogate pair: two characters for YAML, libyaml refuses
        b'["a\xc2\x85b"]',  # a raw NEL: a line break in YAML
        b'["a\xe2\x80\xa8b"]',
        b'{"a":\t1}',  # a tab: PyYAML refuses it, libyaml not
        b'{"a":\n1}',
        b'{"' + b"k" * 1030 + b'": 1}',  # over YAML's implicit key limit
        b'{"' + b"k" * 200 + b'": 1, "x": "' + b"y" * 1000 + b'"}',
        b"[1]  # a comment",
        b'["\x7f"]',
        b'"\xef\xbb\xbfa"',
    ],
)
def test_json_documents_that_yaml_reads_differently_are_left_to_yaml(data: bytes) -> None:
    assert _fastyaml.decode(data) is _fastyaml.MISS
    assert_same_outcome(outcome(YAML.decode, data), outcome(_yaml_decode_with_loader, data))


# --------------------------------------------------------------------------- a real kiwiPy

KIWIPY_PYTHON = Path(
    os.environ.get("KIWI_ANYIO_KIWIPY_PYTHON")
    or Path(__file__).resolve().parent.parent / ".venv-kiwipy" / "bin" / "python"
)

_PEER = r"""
import json, sys, yaml
out = []
for line in sys.stdin:
    wire = json.loads(line).encode("utf-8", "surrogatepass")
    try:
        out.append(repr(yaml.load(wire, Loader=yaml.FullLoader)))
    except Exception as exc:
        out.append("error " + type(exc).__name__)
print(json.dumps({"pyyaml": yaml.__version__, "reprs": out}))
"""


def test_a_real_kiwipy_process_reads_what_we_send() -> None:
    # never skipped: without kiwiPy's venv (scripts/test builds it) this fails
    assert KIWIPY_PYTHON.exists(), f"{KIWIPY_PYTHON} is missing: run scripts/test"
    batch = [
        {"i": 1, "p": "x" * 64},
        ({"i": 1, "p": "x" * 64}, False),
        {"result": [1, 2.5, None, True, "é"]},
        {"body": "b", "sender": "s", "subject": None, "correlation_id": "c"},
        {"a": 1e16, "b": -0.0, "c": 1e-5, "d": float("inf"), "e": 123456789.125},
        {"yes": "no", "on": "~", "0o17": "1e5", ": ": "#", "- ": "\u2028\x85\ufeff\x7f"},
        {1: "int key", None: "none key", False: "bool key", 2.5: "float key"},
        (b"\x00\xff", {1, 2}, 1 + 2j, datetime.date(2024, 2, 29)),
        datetime.datetime(2024, 2, 29, 12, 30, 1, 123456, tzinfo=datetime.UTC),
        "\U0001f600 emoji and \ud800 lone surrogate",
        ["x" * 5000, {"k" * 150: 1}],
        [[], {}, (), set()],
    ]
    wires = [YAML.encode(value) for value in batch]
    lines = "".join(json.dumps(w.decode("utf-8", "surrogatepass")) + "\n" for w in wires)
    proc = subprocess.run(
        [str(KIWIPY_PYTHON), "-c", _PEER], input=lines, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    # kiwiPy reads each as the value sent, as it reads kiwiPy's own encoding of it
    assert result["reprs"] == [repr(kiwipy_decode(kiwipy_encode(value))) for value in batch]
    for wire, value in zip(wires, batch, strict=True):
        assert_same(kiwipy_decode(wire), value)

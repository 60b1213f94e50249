"""Tests of :mod:`kiwi_anyio.filters`: kiwiPy's broadcast filter tests plus the deliberate fixes."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kiwi_anyio.filters import BroadcastFilter

SUBJECTS = ["purchase.car", "purchase.piano", "sell.guitar", "sell.house"]
SENDERS = ["bob.jones", "bob.smith", "martin.uber", "alice.jones"]

Message = tuple[Any, Any]  # (sender, subject)


class Recorder:
    """A broadcast subscriber that records ``(sender, subject)`` and returns ``'seen'``."""

    def __init__(self) -> None:
        self.received: list[Message] = []

    def __call__(self, comm: Any, body: Any, sender: Any, subject: Any, correlation_id: Any) -> str:
        self.received.append((sender, subject))
        return "seen"


def send_all(subscriber: Callable[..., Any], messages: list[Message]) -> None:
    """Deliver broadcasts the two ways kiwiPy does: RMQ positionally, Local by keyword."""
    for index, (sender, subject) in enumerate(messages):
        if index % 2:
            subscriber(None, "body", sender, subject, None)
        else:
            subscriber(None, body="body", sender=sender, subject=subject, correlation_id=None)


def subjects_of(recorder: Recorder) -> list[Any]:
    return [subject for _, subject in recorder.received]


def senders_of(recorder: Recorder) -> list[Any]:
    return [sender for sender, _ in recorder.received]


# --------------------------------------------------------------------------- kiwiPy's tests


def test_broadcast_filter_subject() -> None:
    recorder = Recorder()
    send_all(BroadcastFilter(recorder, subject="purchase.*"), [(None, s) for s in SUBJECTS])
    assert subjects_of(recorder) == ["purchase.car", "purchase.piano"]


def test_broadcast_filter_sender() -> None:
    recorder = Recorder()
    send_all(BroadcastFilter(recorder, sender="*.jones"), [(s, None) for s in SENDERS])
    assert senders_of(recorder) == ["bob.jones", "alice.jones"]


EXPECTED_COMBINATIONS = [
    ("bob.jones", "purchase.car"),
    ("bob.jones", "purchase.piano"),
    ("alice.jones", "purchase.car"),
    ("alice.jones", "purchase.piano"),
]
ALL_COMBINATIONS = [(sender, subject) for sender in SENDERS for subject in SUBJECTS]


def test_broadcast_filter_sender_and_subject() -> None:
    recorder = Recorder()
    filtered = BroadcastFilter(recorder)
    filtered.add_sender_filter("*.jones")
    filtered.add_subject_filter("purchase.*")
    send_all(filtered, ALL_COMBINATIONS)
    assert recorder.received == EXPECTED_COMBINATIONS


def test_broadcast_filter_sender_and_subject_regex() -> None:
    recorder = Recorder()
    filtered = BroadcastFilter(recorder)
    filtered.add_sender_filter(re.compile(".*.jones"))
    filtered.add_subject_filter(re.compile("purchase.*"))
    send_all(filtered, ALL_COMBINATIONS)
    assert recorder.received == EXPECTED_COMBINATIONS


def test_broadcast_filter_match() -> None:
    recorder = Recorder()
    send_all(BroadcastFilter(recorder, sender="alice.jones"), [(s, None) for s in SENDERS])
    assert senders_of(recorder) == ["alice.jones"]


# --------------------------------------------------------------------------- API


def test_no_filters_accept_everything() -> None:
    recorder = Recorder()
    messages: list[Message] = [(None, None), ("a", "b"), (1, 2)]
    send_all(BroadcastFilter(recorder), messages)
    assert recorder.received == messages


def test_call_returns_the_subscribers_result_or_none() -> None:
    filtered = BroadcastFilter(Recorder(), subject="yes")
    assert filtered(None, "body", None, "yes", None) == "seen"
    assert filtered(None, "body", None, "no", None) is None


def test_subscriber_gets_all_arguments_positionally() -> None:
    calls: list[tuple[Any, ...]] = []

    def subscriber(*args: Any) -> None:
        calls.append(args)

    filtered = BroadcastFilter(subscriber)
    filtered("comm", body="b", sender="s", subject="t", correlation_id="c")
    filtered("comm", "b")
    assert calls == [("comm", "b", "s", "t", "c"), ("comm", "b", None, None, None)]


def test_async_subscriber_returns_a_coroutine_for_the_caller() -> None:
    received: list[Any] = []

    async def subscriber(comm: Any, body: Any, sender: Any, subject: Any, corr: Any) -> int:
        received.append(body)
        return 42

    filtered = BroadcastFilter(subscriber, subject="a.*")
    assert filtered(None, "skipped", None, "b.c", None) is None
    coroutine = filtered(None, "body", None, "a.b", None)
    assert coroutine is not None
    assert received == []  # not run until awaited

    async def run() -> int:
        assert coroutine is not None
        return await coroutine

    assert asyncio.run(run()) == 42
    assert received == ["body"]


def test_name_subscriber_and_repr() -> None:
    recorder = Recorder()
    filtered = BroadcastFilter(recorder, subject="a.*", sender=7)
    assert filtered.__name__ == "BroadcastFilter"
    assert filtered.subscriber is recorder
    assert "subject=['a.*']" in repr(filtered)
    assert "sender=[7]" in repr(filtered)


def test_is_filtered_and_matches_are_opposites() -> None:
    filtered = BroadcastFilter(Recorder(), subject="purchase.*", sender="*.jones")
    for sender, subject in [*ALL_COMBINATIONS, (None, None), ("bob.jones", None)]:
        expected = (sender, subject) in EXPECTED_COMBINATIONS
        assert filtered.matches(sender, subject) is expected
        assert filtered.is_filtered(sender, subject) is not expected


def test_filters_of_one_kind_are_ored() -> None:
    recorder = Recorder()
    filtered = BroadcastFilter(recorder, subject="purchase.car")
    filtered.add_subject_filter("sell.*")
    send_all(filtered, [(None, s) for s in SUBJECTS])
    assert subjects_of(recorder) == ["purchase.car", "sell.guitar", "sell.house"]


def test_other_values_compare_with_equality() -> None:
    filtered = BroadcastFilter(Recorder(), sender=42)
    assert filtered.matches(42, None)
    assert not filtered.matches(43, None)
    assert not filtered.matches("42", None)


@pytest.mark.parametrize(
    ("pattern", "value", "expected"),
    [
        ("purchase.*", "purchase.", True),  # * may match nothing
        ("purchase.*", "purchase.car.red", True),  # * matches dots
        ("*", "", True),
        ("*", "anything.at.all", True),
        ("*.jones", ".jones", True),
        ("a*b*c", "aXXbYYc", True),
        ("a*b*c", "aXXbYY", False),
        ("purchase.*", "purchaseXcar", False),  # '.' is literal
        ("*", "multi\nline", True),  # * matches newlines too
    ],
)
def test_wildcards(pattern: str, value: str, expected: bool) -> None:
    assert BroadcastFilter(Recorder(), subject=pattern).matches(None, value) is expected


def test_compiled_patterns_keep_kiwipys_match_semantics() -> None:
    # re.match is anchored at the start only, as in kiwiPy; $ anchors the end.
    assert BroadcastFilter(Recorder(), sender=re.compile("alice")).matches("alice.jones", None)
    assert not BroadcastFilter(Recorder(), sender=re.compile("jones")).matches("alice.jones", None)
    anchored = BroadcastFilter(Recorder(), sender=re.compile(r"alice\.jones$"))
    assert anchored.matches("alice.jones", None)
    assert not anchored.matches("alice.jonesXYZ", None)


# --------------------------------------------------------------------------- deliberate fixes


def test_fix_str_filter_matches_the_whole_value() -> None:
    recorder = Recorder()
    send_all(
        BroadcastFilter(recorder, sender="alice.jones"),
        [("alice.jones", None), ("alice.jonesXYZ", None), ("alice.jones.jr", None)],
    )
    assert senders_of(recorder) == ["alice.jones"]
    assert not BroadcastFilter(Recorder(), subject="purchase").matches(None, "purchase.car")
    assert BroadcastFilter(Recorder(), subject="purchase*").matches(None, "purchase.car")


@pytest.mark.parametrize(
    ("pattern", "matching", "not_matching"),
    [
        ("a+b", "a+b", ["aab", "ab"]),
        ("f(x", "f(x", ["fx"]),  # kiwiPy: re.error
        ("[abc]", "[abc]", ["a"]),
        ("a?b", "a?b", ["b", "ab"]),
        ("x|y", "x|y", ["x", "y"]),
        ("^a$", "^a$", ["a"]),
        ("a\\d", "a\\d", ["a1"]),
        ("{1}", "{1}", []),
    ],
)
def test_fix_regex_metacharacters_are_literal(
    pattern: str, matching: str, not_matching: list[str]
) -> None:
    filtered = BroadcastFilter(Recorder(), subject=pattern)
    assert filtered.matches(None, matching)
    for value in not_matching:
        assert not filtered.matches(None, value)


def test_fix_missing_subject_or_sender_does_not_bypass_the_filter() -> None:
    recorder = Recorder()
    filtered = BroadcastFilter(recorder, subject="purchase.*", sender="*.jones")
    send_all(
        filtered,
        [(None, "purchase.car"), ("bob.jones", None), (None, None), ("bob.jones", "purchase.car")],
    )
    assert recorder.received == [("bob.jones", "purchase.car")]


def test_explicit_none_filter_matches_a_missing_value() -> None:
    filtered = BroadcastFilter(Recorder())
    filtered.add_subject_filter(None)
    filtered.add_subject_filter("news.*")
    assert filtered.matches(None, None)
    assert filtered.matches(None, "news.today")
    assert not filtered.matches(None, "other")


@pytest.mark.parametrize("value", [42, 4.2, b"alice.jones", ("alice.jones",), None])
def test_fix_string_filters_never_raise_on_non_strings(value: Any) -> None:
    for filter_value in ("alice.jones", "*", re.compile("alice.*")):
        assert not BroadcastFilter(Recorder(), sender=filter_value).matches(value, None)


def test_bytes_pattern_matches_bytes_only() -> None:
    filtered = BroadcastFilter(Recorder(), sender=re.compile(b"ali"))
    assert filtered.matches(b"alice", None)
    assert not filtered.matches("alice", None)


# --------------------------------------------------------------------------- properties

_PLAIN = st.text(alphabet=st.characters(exclude_characters="*"))


@given(pattern=_PLAIN, value=st.text())
def test_a_filter_without_wildcards_is_equality(pattern: str, value: str) -> None:
    filtered = BroadcastFilter(Recorder(), subject=pattern)
    assert filtered.matches(None, pattern)
    assert filtered.matches(None, value) is (value == pattern)


@given(parts=st.lists(_PLAIN, min_size=1, max_size=5), data=st.data())
def test_wildcards_match_any_filling(parts: list[str], data: st.DataObject) -> None:
    fillers = data.draw(st.lists(st.text(), min_size=len(parts) - 1, max_size=len(parts) - 1))
    value = parts[0] + "".join(f + p for f, p in zip(fillers, parts[1:], strict=True))
    assert BroadcastFilter(Recorder(), subject="*".join(parts)).matches(None, value)


_KIWIPY_ALPHABET = st.sampled_from("ab.*")


@given(
    pattern=st.text(alphabet=_KIWIPY_ALPHABET, max_size=8),
    value=st.text(alphabet=st.sampled_from("ab.X"), max_size=10),
)
def test_same_as_kiwipy_anchored_at_both_ends(pattern: str, value: str) -> None:
    # On kiwiPy's intended syntax (words, dots, stars) we differ only by anchoring the end.
    kiwipy_regex = pattern.replace(".", "[.]").replace("*", ".*")
    ours = BroadcastFilter(Recorder(), subject=pattern).matches(None, value)
    assert ours is (re.fullmatch(kiwipy_regex, value) is not None)
    if ours:  # so we accept a subset of what kiwiPy accepts
        assert re.match(kiwipy_regex, value) is not None

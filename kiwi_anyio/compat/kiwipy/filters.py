"""kiwiPy's :class:`BroadcastFilter`, with kiwiPy 0.9's matching rules.

kiwi_anyio's own :class:`kiwi_anyio.BroadcastFilter` matches a ``str`` filter against the
whole value and does not let a missing subject or sender through (see
:mod:`kiwi_anyio.filters`). kiwiPy's clients rely on kiwiPy's rules, which this subclass gives
back:

* a ``str`` filter is turned into a regular expression with ``.`` escaped and ``*`` as
  ``.*``, and tested with ``match``: a **prefix** match (``'alice.jones'`` also accepts
  ``'alice.jonesXYZ'``; other regex characters keep their meaning);
* a compiled pattern is tested with ``pattern.match``; anything else with ``==``;
* a ``None`` subject (or sender) **bypasses** the subject (or sender) filter: plumpy filters
  on ``subject=re.compile('^(?!state_changed).*')`` and expects broadcasts without a subject.

It is a :class:`kiwi_anyio.BroadcastFilter`, so kiwi_anyio's communicators recognise it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from ...filters import BroadcastFilter as _BroadcastFilter

__all__ = ["BroadcastFilter"]


def _kiwipy_check(filter_value: Any) -> Callable[[Any], bool]:
    if isinstance(filter_value, str):
        regex = re.compile(filter_value.replace(".", "[.]").replace("*", ".*"))

        def check_str(value: Any) -> bool:
            return regex.match(value) is not None

        return check_str
    if isinstance(filter_value, re.Pattern):
        pattern: re.Pattern[Any] = filter_value

        def check_pattern(value: Any) -> bool:
            return pattern.match(value) is not None

        return check_pattern

    def check_equal(value: Any) -> bool:
        return bool(value == filter_value)

    return check_equal


class BroadcastFilter(_BroadcastFilter[Any]):
    """``BroadcastFilter(subscriber, subject=None, sender=None)`` with kiwiPy's rules (see
    the module docstring)."""

    _kiwipy_subject_checks: list[Callable[[Any], bool]]
    _kiwipy_sender_checks: list[Callable[[Any], bool]]

    def add_subject_filter(self, subject_filter: Any) -> None:
        """Also accept subjects matching ``subject_filter`` (kiwiPy's rules)."""
        super().add_subject_filter(subject_filter)
        self.__dict__.setdefault("_kiwipy_subject_checks", []).append(_kiwipy_check(subject_filter))

    def add_sender_filter(self, sender_filter: Any) -> None:
        """Also accept senders matching ``sender_filter`` (kiwiPy's rules)."""
        super().add_sender_filter(sender_filter)
        self.__dict__.setdefault("_kiwipy_sender_checks", []).append(_kiwipy_check(sender_filter))

    def is_filtered(self, sender: Any, subject: Any) -> bool:
        """True if the message is filtered **out**; kiwiPy's ``is_filtered``."""
        subject_checks = self.__dict__.get("_kiwipy_subject_checks", ())
        if (
            subject is not None
            and subject_checks
            and not any(check(subject) for check in subject_checks)
        ):
            return True
        sender_checks = self.__dict__.get("_kiwipy_sender_checks", ())
        return bool(
            sender is not None
            and sender_checks
            and not any(check(sender) for check in sender_checks)
        )

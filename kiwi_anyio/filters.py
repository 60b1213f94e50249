"""Client-side filtering of broadcasts by sender and subject.

Every broadcast reaches every broadcast subscriber (kiwiPy routes them all with the key
``[broadcast]``), so filtering happens on the receiving side. :class:`BroadcastFilter` wraps a
broadcast subscriber and calls it only for the messages whose subject and sender match.

A filter is one of:

* a ``str``, where ``*`` matches any run of characters (dots included) and every other
  character matches itself: ``'purchase.*'`` matches ``'purchase.car'`` and
  ``'purchase.car.red'``, ``'*.jones'`` matches ``'alice.jones'``;
* a compiled regular expression (``re.compile(...)``), tested with ``pattern.match(value)``
  exactly as kiwiPy does: it is anchored at the start but not at the end, so add ``$`` (or
  ``\\Z``) to match the whole value;
* anything else, compared with ``==`` (for example an integer sender id).

Filters of one kind (subject or sender) are OR'ed; the subject and sender checks are AND'ed. A
string or regular-expression filter never matches a value that is not a string (it does not
raise).

Differences from kiwiPy 0.9's ``kiwipy.BroadcastFilter`` (all deliberate):

* A ``str`` filter must match the **whole** value. kiwiPy's is a prefix match: its
  ``'alice.jones'`` also accepts ``'alice.jonesXYZ'``, and ``'purchase'`` accepts
  ``'purchase.car'``. Write ``'purchase*'`` for the old behaviour.
* In a ``str`` filter only ``*`` is special. kiwiPy passes the string to ``re`` with just
  ``.`` escaped and ``*`` turned into ``.*``, so ``'a+b'`` there matches ``'aab'`` but not
  ``'a+b'``, and ``'f(x'`` raises ``re.error``. Here ``'a+b'`` matches only ``'a+b'``.
  Compiled patterns are unchanged (``pattern.match``).
* A message **without** a subject (or sender) does **not** pass a subject (or sender)
  filter. kiwiPy lets a ``None`` subject or sender bypass the filter, so a subscriber filtering
  on ``'purchase.*'`` also received every broadcast sent without a subject. ``None`` is tested
  like any other value: only an explicit ``add_subject_filter(None)`` filter (compared with
  ``==``) matches it.
* A ``str`` or pattern filter tested against a non-string value (such as an integer sender)
  does not match; kiwiPy raises ``TypeError`` out of the ``re`` call.
* ``*`` also matches newlines (kiwiPy's ``.*`` stops at a newline).
* The filter returns what the subscriber returns (kiwiPy 0.9 does as well; older versions
  returned ``None``), so an ``async`` subscriber gives a coroutine for the caller to await.
  :meth:`BroadcastFilter.matches` is the positive form of ``is_filtered``, and
  :attr:`BroadcastFilter.subscriber` exposes the wrapped subscriber.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Generic, TypeVar

__all__ = ["BroadcastFilter"]

R = TypeVar("R")

#: A compiled check: value → does it match?
_Check = Callable[[Any], bool]


def _wildcard_check(pattern: str) -> _Check:
    """``*`` matches any run of characters, everything else matches itself, whole string."""
    regex = re.compile(".*".join(re.escape(part) for part in pattern.split("*")), re.DOTALL)

    def check(value: Any) -> bool:
        return isinstance(value, str) and regex.fullmatch(value) is not None

    return check


def _pattern_check(pattern: re.Pattern[Any]) -> _Check:
    """``pattern.match(value)``, kiwiPy's test; a value of the wrong type does not match."""

    def check(value: Any) -> bool:
        if not isinstance(value, str | bytes):
            return False
        try:
            return pattern.match(value) is not None
        except TypeError:  # a str pattern against bytes or the reverse
            return False

    return check


def _equality_check(expected: Any) -> _Check:
    def check(value: Any) -> bool:
        return bool(value == expected)

    return check


def _make_check(filter_value: Any) -> _Check:
    if isinstance(filter_value, str):
        return _wildcard_check(filter_value)
    if isinstance(filter_value, re.Pattern):
        return _pattern_check(filter_value)
    return _equality_check(filter_value)


class BroadcastFilter(Generic[R]):
    """A broadcast subscriber that passes on only the messages from some senders or subjects.

    Use it wherever a broadcast subscriber is expected::

        comm.add_broadcast_subscriber(BroadcastFilter(on_purchase, subject="purchase.*"))

    Args:
        subscriber: the wrapped broadcast subscriber, called as
            ``subscriber(communicator, body, sender, subject, correlation_id)``.
        subject: if not ``None``, a first subject filter (see :meth:`add_subject_filter`).
        sender: if not ``None``, a first sender filter (see :meth:`add_sender_filter`).

    Filter syntax and the differences from kiwiPy are described in :mod:`kiwi_anyio.filters`.
    """

    def __init__(
        self,
        subscriber: Callable[[Any, Any, Any, Any, Any], R],
        subject: Any = None,
        sender: Any = None,
    ) -> None:
        self._subscriber = subscriber
        self._subject_filters: list[Any] = []
        self._subject_checks: list[_Check] = []
        self._sender_filters: list[Any] = []
        self._sender_checks: list[_Check] = []
        if subject is not None:
            self.add_subject_filter(subject)
        if sender is not None:
            self.add_sender_filter(sender)

    @property
    def __name__(self) -> str:
        """Always ``'BroadcastFilter'``, as in kiwiPy (code that logs ``subscriber.__name__``)."""
        return "BroadcastFilter"

    @property
    def subscriber(self) -> Callable[[Any, Any, Any, Any, Any], R]:
        """The wrapped broadcast subscriber."""
        return self._subscriber

    def __call__(
        self,
        communicator: Any,
        body: Any,
        sender: Any = None,
        subject: Any = None,
        correlation_id: Any = None,
    ) -> R | None:
        """Call the subscriber if the message matches; kiwiPy's broadcast subscriber signature.

        Returns:
            ``None`` if the message is filtered out, else what
            ``subscriber(communicator, body, sender, subject, correlation_id)`` returns (a
            coroutine, not yet awaited, for an ``async`` subscriber).
        """
        if self.is_filtered(sender, subject):
            return None
        return self._subscriber(communicator, body, sender, subject, correlation_id)

    def add_subject_filter(self, subject_filter: Any) -> None:
        """Also accept messages whose subject matches ``subject_filter``.

        Args:
            subject_filter: a ``str`` with ``*`` wildcards, a compiled regular expression, or
                any other value compared with ``==``.
        """
        self._subject_checks.append(_make_check(subject_filter))
        self._subject_filters.append(subject_filter)

    def add_sender_filter(self, sender_filter: Any) -> None:
        """Also accept messages whose sender matches ``sender_filter``.

        Args:
            sender_filter: a ``str`` with ``*`` wildcards, a compiled regular expression, or
                any other value compared with ``==``.
        """
        self._sender_checks.append(_make_check(sender_filter))
        self._sender_filters.append(sender_filter)

    def is_filtered(self, sender: Any, subject: Any) -> bool:
        """Return ``True`` if a message with this sender and subject is filtered **out**.

        A kind of filter with no filters accepts everything, including ``None``. Otherwise
        the value must match at least one filter; a missing (``None``) value matches only an
        explicit ``None`` filter.
        """
        if self._subject_checks and not any(check(subject) for check in self._subject_checks):
            return True
        return bool(self._sender_checks) and not any(check(sender) for check in self._sender_checks)

    def matches(self, sender: Any, subject: Any) -> bool:
        """Return ``True`` if a message with this sender and subject reaches the subscriber.

        The opposite of :meth:`is_filtered`.
        """
        return not self.is_filtered(sender, subject)

    def __repr__(self) -> str:
        parts = [repr(self._subscriber)]
        if self._subject_filters:
            parts.append(f"subject={self._subject_filters!r}")
        if self._sender_filters:
            parts.append(f"sender={self._sender_filters!r}")
        return f"BroadcastFilter({', '.join(parts)})"

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

Typed remote errors: :func:`register_remote_error` registers an exception class;
:func:`attach_error_headers` and :func:`split_reply_headers` carry the names of an exception's
type and bases with its reply; :func:`rebuild_remote_error` gives the caller the registered
type.

pydantic and msgspec are optional: they are never imported here. A class can only be a
pydantic model (a msgspec ``Struct``) if pydantic (msgspec) is already imported, so the checks
look in ``sys.modules``.

The modules, each with what it owns in its docstring (lower ones never import higher ones)::

    _subscribers.py  adapt_subscriber: the wrapper of a typed subscriber
    _convert.py      plain data -> typed values (validation, InvalidMessage's text)
    _plain.py        typed values -> plain data (to_plain)
    _optional.py     is this a pydantic model, a msgspec Struct? (without importing them)
    _errors.py       the remote error registry, its headers, rebuild_remote_error

Owns: the public names of the package. Must not touch: anything beyond re-exporting them.
"""

from __future__ import annotations

from ._errors import (
    ERROR_BASES_HEADER,
    ERROR_TYPE_HEADER,
    REPLY_HEADERS_KEY,
    attach_error_headers,
    qualified_name,
    rebuild_remote_error,
    register_remote_error,
    remote_error_headers,
    split_reply_headers,
    unregister_remote_error,
)
from ._plain import to_plain
from ._subscribers import SubscriberKind, adapt_subscriber

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

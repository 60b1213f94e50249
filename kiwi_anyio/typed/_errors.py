"""Typed remote errors: the registry, the headers of an exception reply, and the exception a
caller's future raises.

* :func:`register_remote_error` (also a decorator) registers an exception class under its
  qualified name ``module.QualName``.
* :func:`remote_error_headers` gives the headers of an exception reply: the qualified names of
  the exception's type and of its bases. :func:`attach_error_headers` keeps them in the reply
  dict, :func:`split_reply_headers` takes them out when it is encoded, so they follow the reply
  through every path that sends (or resends) it.
* :func:`rebuild_remote_error` turns the caller's :class:`~kiwi_anyio.RemoteException` into
  the registered type, or leaves it unchanged. A name is only ever looked up in the registry:
  nothing is imported or constructed for a name nobody registered.

Owns: the registry and the two ``x-kiwi-error-*`` headers. Must not touch: typed messages
(the rest of the package), the reply's body (``_wire.py``), publishing: the patterns call
these functions where they build, encode and resolve replies.
"""

from __future__ import annotations

import logging
import types
from collections.abc import Mapping
from typing import Any, Final, TypeVar

from ..exceptions import InvalidMessage, RemoteException

logger = logging.getLogger("kiwi_anyio.typed")

E = TypeVar("E", bound=Exception)

#: the qualified name of the exception's type (``module.QualName``)
ERROR_TYPE_HEADER: Final = "x-kiwi-error-type"
#: the qualified names of its bases, nearest first, comma-separated (below ``Exception``)
ERROR_BASES_HEADER: Final = "x-kiwi-error-bases"
_MAX_NAMES: Final = 16  # names read from (and written to) the headers
_MAX_NAME_LENGTH: Final = 512
_MAX_HEADER_LENGTH: Final = _MAX_NAMES * (_MAX_NAME_LENGTH + 1)

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

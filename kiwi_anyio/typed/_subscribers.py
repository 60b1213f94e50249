"""Typed subscribers: :func:`adapt_subscriber`, called once when a subscriber is added.

A subscriber whose message parameter is annotated with a model (see ``_convert.py``) is
wrapped so that it receives the converted body, and its result goes back as plain data
(``_plain.py``); any other subscriber is returned as it is, at no cost per message.

Owns: reading a subscriber's annotation, the wrapper (``async`` exactly when the subscriber
is), and seeing through a :class:`~kiwi_anyio.BroadcastFilter`. Must not touch: the
conversions themselves, the patterns that call the subscriber, the wire.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from typing import Any, Final, Literal

from ..filters import BroadcastFilter
from ._convert import body_converter
from ._plain import deep_plain

logger = logging.getLogger("kiwi_anyio.typed")

SubscriberKind = Literal["task", "rpc", "broadcast"]
_KINDS: Final = frozenset({"task", "rpc", "broadcast"})


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
    convert = body_converter(_message_annotation(fn))
    if convert is None:
        return fn
    plain = deep_plain  # the typed path: returned containers are searched for models too
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

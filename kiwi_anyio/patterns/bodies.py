"""Encoding and decoding bodies without stalling the event loop.

A large body costs its codec time in proportion (the default YAML codec about 4-40 ms per MiB
of plain data, PyYAML's fallback for other values 0.2-1 s per MiB; see
``docs/performance.md``). Done on the event loop, a 50 MiB body would stall heartbeats and
every other subscriber long enough to lose the connection. :func:`encode` and :func:`decode`
run the codec in a worker thread when the body is large (decode: over
:data:`OFF_LOOP_BYTES`; encode: when :func:`looks_large` says so, from a cheap look at the
value), and in line otherwise (a thread hop costs about 50-100 µs, more than a small body's
whole codec time).

It owns only that choice; codecs are :mod:`kiwi_anyio.codecs`'.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import anyio.to_thread

__all__ = ["OFF_LOOP_BYTES", "decode", "encode", "looks_large"]

#: Bodies larger than this are decoded in a worker thread.
OFF_LOOP_BYTES: Final = 256 * 1024
#: A string (or bytes) longer than this makes a value large to encode.
_LARGE_SCALAR: Final = 64 * 1024
#: A container with more items than this makes a value large to encode.
_LARGE_CONTAINER: Final = 2000
#: How deep :func:`looks_large` looks into containers.
_DEPTH: Final = 3


def looks_large(value: Any, depth: int = _DEPTH) -> bool:
    """Whether encoding ``value`` may take long enough to run it off the loop.

    Looks at long strings and big containers down to a few levels, at a cost of a few
    microseconds at most for small values; a value it misses (deep nesting of many small
    containers) is encoded in line as before.
    """
    if isinstance(value, str | bytes | bytearray):
        return len(value) > _LARGE_SCALAR
    if isinstance(value, dict):
        if len(value) > _LARGE_CONTAINER:
            return True
        if depth:
            return any(looks_large(item, depth - 1) for item in value.values())
        return False
    if isinstance(value, list | tuple | set | frozenset):
        if len(value) > _LARGE_CONTAINER:
            return True
        if depth:
            return any(looks_large(item, depth - 1) for item in value)
    return False


async def encode(fn: Callable[[Any], bytes], value: Any) -> bytes:
    """``fn(value)``, in a worker thread when :func:`looks_large`.

    Cancellation: a thread already running finishes; its result is dropped.
    """
    if looks_large(value):
        return await anyio.to_thread.run_sync(fn, value, abandon_on_cancel=True)
    return fn(value)


async def decode(fn: Callable[[bytes], Any], body: bytes) -> Any:
    """``fn(body)``, in a worker thread when the body is over :data:`OFF_LOOP_BYTES`.

    Cancellation: a thread already running finishes; its result is dropped.
    """
    if len(body) > OFF_LOOP_BYTES:
        return await anyio.to_thread.run_sync(fn, body, abandon_on_cancel=True)
    return fn(body)

"""The socket pair between a supervisor and each of its children (``--supervised-fd``).

One line at a time, never blocking the sender: the child sends ``status STATE CONNECTED``
(``CONNECTED`` is ``0`` or ``1``) when its status changes and every ``report_every`` seconds
(at most :data:`CHILD_REPORT_MAX_EVERY`), so that its silence means a blocked event loop; the
supervisor sends ``stop`` (graceful) or ``kill`` (at once). The end of the socket means that
the other side is gone.

Owns: sending and receiving those lines. Must not touch: what either side does with them.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator

import anyio

#: A supervised child reports its status every ``health_interval / 2`` seconds (at most
#: this often) and is unhealthy ("unresponsive": a blocked event loop?) after a silence of
#: ``3 * health_interval`` (at least 1 s).
CHILD_REPORT_MAX_EVERY = 2.0


def send_line(channel: socket.socket, line: str) -> None:
    """Send one line without blocking; a peer that does not read (or is gone) loses it."""
    with contextlib.suppress(OSError):  # BlockingIOError included
        channel.send(line.encode() + b"\n")


async def _receive(channel: socket.socket) -> bytes:
    """The next bytes from the (non-blocking) socket; ``b""`` at its end or on an error."""
    while True:
        try:
            return channel.recv(1024)
        except BlockingIOError:
            pass
        except OSError:
            return b""
        await _wait_readable(channel)


async def _wait_readable(channel: socket.socket) -> None:
    wait = getattr(anyio, "wait_readable", None)  # anyio >= 4.7
    if wait is None:  # pragma: no cover - older anyio
        wait = anyio.wait_socket_readable
    await wait(channel)


async def receive_lines(channel: socket.socket) -> AsyncIterator[bytes]:
    """The lines (without their ``\\n``) that arrive on ``channel``, until its end or an error."""
    buffer = b""
    while True:
        try:
            chunk = await _receive(channel)
        except OSError:
            return
        if not chunk:
            return
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            yield line

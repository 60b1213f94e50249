"""A loopback TCP forwarder whose links can be cut, for the ``recovery`` workload.

``async with forwarder(host, port) as proxy:`` listens on ``127.0.0.1:proxy.port`` and
forwards every accepted connection to ``host:port``; ``await proxy.cut()`` drops every current
link at once, as a network failure would, while new connections are still accepted. It only
ever connects to the broker the harness runs on this machine.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.abc

__all__ = ["Forwarder", "forwarder"]


class Forwarder:
    """Forwards ``127.0.0.1:<port>`` to ``upstream``."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = 0
        self.accepted = 0
        self._links: list[tuple[anyio.abc.SocketStream, anyio.abc.SocketStream]] = []

    def url(self, user: str = "guest", password: str = "guest") -> str:
        """An AMQP URL that goes through the forwarder."""
        return f"amqp://{user}:{password}@127.0.0.1:{self.port}/"

    async def cut(self) -> None:
        """Close both sides of every current link."""
        links, self._links = self._links, []
        for client, upstream in links:
            await anyio.aclose_forcefully(client)
            await anyio.aclose_forcefully(upstream)

    async def _pump(self, source: anyio.abc.SocketStream, sink: anyio.abc.SocketStream) -> None:
        try:
            async for chunk in source:
                await sink.send(chunk)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass
        finally:
            await anyio.aclose_forcefully(sink)
            await anyio.aclose_forcefully(source)

    async def _handle(self, client: anyio.abc.SocketStream) -> None:
        try:
            upstream = await anyio.connect_tcp(*self.upstream)
        except OSError:
            await anyio.aclose_forcefully(client)
            return
        self.accepted += 1
        self._links.append((client, upstream))
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._pump, client, upstream)
            tg.start_soon(self._pump, upstream, client)


@asynccontextmanager
async def forwarder(upstream_host: str, upstream_port: int) -> AsyncIterator[Forwarder]:
    """Serve a :class:`Forwarder` until the block exits."""
    proxy = Forwarder(upstream_host, upstream_port)
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    proxy.port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, proxy._handle)
        try:
            yield proxy
        finally:
            tg.cancel_scope.cancel()

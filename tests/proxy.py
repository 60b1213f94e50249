"""A small TCP proxy on loopback for fault tests: it can cut, stall or refuse the link."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.abc


class Proxy:
    """Forwards ``127.0.0.1:<port>`` to ``upstream``; every link can be cut or stalled."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = 0
        self.refusing = False
        self.accepted = 0
        self._links: list[tuple[anyio.abc.SocketStream, anyio.abc.SocketStream]] = []
        self._flowing = anyio.Event()
        self._flowing.set()
        self._tg: anyio.abc.TaskGroup | None = None

    def url(self, path: str = "/", query: str = "") -> str:
        """An AMQP URL through the proxy."""
        return f"amqp://guest:guest@127.0.0.1:{self.port}{path}" + (f"?{query}" if query else "")

    async def cut(self) -> None:
        """Drop every current link at once (as a network failure would)."""
        links, self._links = self._links, []
        for client, upstream in links:
            await anyio.aclose_forcefully(client)
            await anyio.aclose_forcefully(upstream)

    def stall(self) -> None:
        """Stop forwarding bytes on current links without closing them."""
        if self._flowing.is_set():
            self._flowing = anyio.Event()

    def resume(self) -> None:
        """Forward bytes again."""
        self._flowing.set()

    async def _pump(self, source: anyio.abc.SocketStream, sink: anyio.abc.SocketStream) -> None:
        try:
            async for chunk in source:
                while not self._flowing.is_set():
                    await self._flowing.wait()
                await sink.send(chunk)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass
        finally:
            await anyio.aclose_forcefully(sink)
            await anyio.aclose_forcefully(source)

    async def _handle(self, client: anyio.abc.SocketStream) -> None:
        if self.refusing:
            await anyio.aclose_forcefully(client)
            return
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
async def run_proxy(upstream_host: str, upstream_port: int) -> AsyncIterator[Proxy]:
    """``async with run_proxy(host, port) as proxy:`` serves until the block exits."""
    proxy = Proxy(upstream_host, upstream_port)
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    proxy.port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:
        proxy._tg = tg
        tg.start_soon(listener.serve, proxy._handle)
        try:
            yield proxy
        finally:
            tg.cancel_scope.cancel()

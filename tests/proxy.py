"""Fault-test helpers: a small TCP proxy on loopback that can cut, stall or refuse the link,
and a stream of tasks that goes on across a fault."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
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


class TaskStream:
    """Sends tasks ``0, 1, 2, ...`` with ``concurrency`` senders until the fault has passed.

    ``send(i)`` sends task ``i`` and returns once the broker confirmed it. The test calls
    :meth:`fault_seen` when it notices the fault (e.g. the ``"disconnected"`` event); the
    stream then goes on until ``after_fault`` more sends were confirmed, so it is certainly
    in the middle of sending when the fault hits, and the sends in flight at that moment must
    survive it (:attr:`crossed` counts them).
    """

    def __init__(
        self, send: Callable[[int], Awaitable[None]], *, concurrency: int = 100, limit: int = 50_000
    ) -> None:
        self.send = send
        self.concurrency = concurrency
        self.limit = limit
        #: The tasks whose send returned (confirmed by the broker).
        self.sent: set[int] = set()
        #: Sends that started before the fault was seen and ended after it.
        self.crossed = 0
        #: Sends confirmed after the fault was seen.
        self.after_fault = 0
        self._next = 0
        self._faults = 0
        self._after_fault_wanted = 0

    @property
    def started(self) -> int:
        """How many sends have started."""
        return self._next

    def fault_seen(self) -> None:
        """The fault happened: send until ``after_fault`` (see :meth:`run`) more are confirmed."""
        self._faults += 1

    async def wait_sent(self, count: int) -> None:
        """Wait until ``count`` sends were confirmed."""
        while len(self.sent) < count:
            await anyio.sleep(0.005)

    async def run(self, *, after_fault: int = 300) -> None:
        """Send until ``after_fault`` sends were confirmed after :meth:`fault_seen`."""
        self._after_fault_wanted = after_fault
        async with anyio.create_task_group() as tg:
            for _ in range(self.concurrency):
                tg.start_soon(self._sender)

    def _done(self) -> bool:
        if self._next >= self.limit:
            return True
        return self._faults > 0 and self.after_fault >= self._after_fault_wanted

    async def _sender(self) -> None:
        while not self._done():
            i = self._next
            self._next += 1
            faults = self._faults
            await self.send(i)
            self.sent.add(i)
            if self._faults:
                self.after_fault += 1
                if faults != self._faults:
                    self.crossed += 1

"""The supervised link to the broker.

:class:`Link` owns the connection: it connects (rotating through the URL's hosts), and after
an unexpected loss reconnects with :class:`~.backoff.ReconnectBackoff` until it is closed. It
holds the link's state (:class:`LinkState`, with its transitions in one table), the
connection listeners, the two shared channels (publishing and declaring) and the topology
declared on the current connection (which exchanges exist); a new connection forgets that
topology and tells whoever registered with :meth:`Link.on_new_connection`.

It must not know kiwiPy's patterns: the patterns ask it for channels and declarations and
register callbacks; they never see a reconnect. Consumers that come back after a reconnection
are :mod:`.consumer`'s; confirmed publishing is :mod:`.publisher`'s.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any

import anyio
import anyio.abc

from ..channel import Channel, Connection
from ..exceptions import (
    AMQPError,
    AuthenticationError,
    ChannelClosed,
    CommunicatorClosed,
    ConnectionClosed,
    ConnectionFailed,
    DeliveryFailed,
    ProtocolError,
    VhostNotFound,
)
from .backoff import ReconnectBackoff

__all__ = ["Link", "LinkState", "broker_version"]

logger = logging.getLogger("kiwi_anyio.communicator")

Listener = Callable[[str, BaseException | None], object]


def broker_version(server_properties: Mapping[str, Any]) -> tuple[str | None, tuple[int, ...]]:
    """The broker's product name and version numbers (``("RabbitMQ", (4, 0, 5))``), from
    its server properties (``(None, ())`` where they are missing)."""
    product = server_properties.get("product")
    version = server_properties.get("version")
    if isinstance(product, bytes):
        product = product.decode("utf-8", "replace")
    if isinstance(version, bytes):
        version = version.decode("utf-8", "replace")
    numbers: list[int] = []
    if isinstance(version, str):
        for part in version.split("."):
            if not part.isdigit():
                break
            numbers.append(int(part))
    return (product if isinstance(product, str) else None), tuple(numbers)


class LinkState(enum.Enum):
    """Where the link is in its life."""

    NEW = "new"
    CONNECTING = "connecting"
    OPEN = "open"  # usable; the connection itself may be down and recovering
    CLOSING = "closing"
    CLOSED = "closed"


_TRANSITIONS: dict[LinkState, frozenset[LinkState]] = {
    LinkState.NEW: frozenset({LinkState.CONNECTING}),
    LinkState.CONNECTING: frozenset({LinkState.OPEN, LinkState.CLOSING, LinkState.CLOSED}),
    LinkState.OPEN: frozenset({LinkState.CLOSING, LinkState.CLOSED}),
    LinkState.CLOSING: frozenset({LinkState.CLOSED}),
    LinkState.CLOSED: frozenset(),
}


class Link:
    """The connection, kept up; see the module docstring.

    Args:
        open_connection: ``open_connection(attempt)`` gives a connection context manager
            (the attempt number rotates hosts).
        name: how the link appears in logs (the URL, password hidden).
        reconnect: recover from a lost connection.
        reconnect_timeout: how long :meth:`wait_connection` waits for a recovery.
        reconnect_max_delay: the longest pause between reconnection attempts.
        exchange_auto_delete: declare exchanges auto-delete (kiwiPy's testing mode).
    """

    def __init__(
        self,
        open_connection: Callable[[int], AbstractAsyncContextManager[Connection]],
        *,
        name: str,
        reconnect: bool,
        reconnect_timeout: float,
        reconnect_max_delay: float,
        exchange_auto_delete: bool,
    ) -> None:
        self._open_connection = open_connection
        self.name = name
        self.reconnect = reconnect
        self.reconnect_timeout = reconnect_timeout
        self.reconnect_max_delay = reconnect_max_delay
        self.exchange_auto_delete = exchange_auto_delete
        self.state = LinkState.NEW
        self.connection: Connection | None = None
        self.generation = 0  # counts connections: a send that saw another one declares again
        self.failure: BaseException | None = None  # what ended the link, if it failed
        self.tg: anyio.abc.TaskGroup | None = None  # set by the owner of the lifetime
        # anyio primitives are made on first use, inside the link's own event loop: made
        # here, in a thread that runs another loop (a Jupyter cell creating a communicator
        # for the blocking API on trio), they would bind to that loop
        self._up_event: anyio.Event | None = None
        self._listeners: list[Listener] = []
        self._new_connection_callbacks: list[Callable[[], object]] = []
        self._shutdown_callbacks: list[Callable[[], object]] = []
        self._exchange_callbacks: list[Callable[[str], object]] = []
        self.publisher: Channel | None = None
        self._declarer: Channel | None = None
        self._channel_lock_: anyio.Lock | None = None
        self._exchanges: set[str] = set()
        self._restored: Callable[[Connection], Awaitable[None]] | None = None

    def __repr__(self) -> str:
        return f"<Communicator {self.name} {self.state.value}>"

    @property
    def _up(self) -> anyio.Event:
        """Set while a connection is up (made on first use, in the link's loop)."""
        if self._up_event is None:
            self._up_event = anyio.Event()
        return self._up_event

    @property
    def _channel_lock(self) -> anyio.Lock:
        """Serialises reopening the shared channels (made on first use, in the link's loop)."""
        if self._channel_lock_ is None:
            self._channel_lock_ = anyio.Lock()
        return self._channel_lock_

    # ------------------------------------------------------------ state

    def move_to(self, state: LinkState) -> None:
        """Change state (only along :data:`_TRANSITIONS`; closing twice is a no-op)."""
        if state is self.state:
            return
        if state not in _TRANSITIONS[self.state]:
            raise RuntimeError(f"link: no transition from {self.state.value} to {state.value}")
        self.state = state
        if state is LinkState.CLOSED:
            self._up.set()  # wake anyone waiting for a link: they see "closed"
            self.notify("closed", self.failure)

    @property
    def is_open(self) -> bool:
        return self.state is LinkState.OPEN

    @property
    def is_connected(self) -> bool:
        up = self._up_event  # read from any thread: never create it here
        return self.state is LinkState.OPEN and up is not None and up.is_set()

    def check_open(self, allow_closing: bool = False) -> None:
        """Raise :class:`~kiwi_anyio.CommunicatorClosed` unless open (or closing, if allowed)."""
        if self.state is not LinkState.OPEN and not (
            allow_closing and self.state is LinkState.CLOSING
        ):
            raise CommunicatorClosed(f"the communicator is {self.state.value}")

    # ------------------------------------------------------------ callbacks and listeners

    def on_new_connection(self, callback: Callable[[], object]) -> None:
        """Call ``callback()`` on every new connection (its channels and, after a broker
        restart, its transient exchanges and queues are gone)."""
        self._new_connection_callbacks.append(callback)

    def on_broker_shutdown(self, callback: Callable[[], object]) -> None:
        """Call ``callback()`` when the broker shuts the connection down (320)."""
        self._shutdown_callbacks.append(callback)

    def on_exchange_forgotten(self, callback: Callable[[str], object]) -> None:
        """Call ``callback(exchange)`` when an exchange is found missing and declared again."""
        self._exchange_callbacks.append(callback)

    def on_restored(self, wait: Callable[[Connection], Awaitable[None]]) -> None:
        """After a reconnection, ``await wait(connection)`` before reporting "recovered"."""
        self._restored = wait

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        self._listeners.remove(listener)

    def notify(self, event: str, error: BaseException | None) -> None:
        for listener in list(self._listeners):
            try:
                listener(event, error)
            except Exception:
                logger.exception("connection listener %r raised", listener)

    # ------------------------------------------------------------ the connection

    async def supervise(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Own the connection: connect, and after an unexpected loss reconnect with
        jittered exponential backoff (rotating hosts) until cancelled.

        Raises the first connection's error; later failures that cannot be recovered end
        the link (:attr:`failure`) and cancel the owner's task group.
        """
        attempt = 0  # attempts since the link was last up (rotates hosts)
        backoff = ReconnectBackoff(self.reconnect_max_delay)
        first = True
        while True:
            try:
                async with self._open_connection(attempt) as connection:
                    self.connection = connection
                    self.generation += 1
                    self._forget_topology()
                    self.publisher = await connection.channel(publisher_confirms=True)
                    attempt = 0
                    backoff.connected(anyio.current_time())
                    self._up.set()
                    if first:
                        first = False
                        task_status.started()
                        self.notify("connected", None)
                    else:
                        if self._restored is not None:
                            await self._restored(connection)
                        logger.warning("%s: connection recovered", self)
                        self.notify("recovered", None)
                    await anyio.sleep_forever()
            except (ConnectionClosed, ConnectionFailed, ProtocolError) as exc:
                if first or isinstance(exc, AuthenticationError | VhostNotFound):
                    if first:
                        raise
                    self._give_up(exc)
                    return
                if self._up.is_set():
                    self._up_event = anyio.Event()
                if not self.reconnect:
                    self._give_up(exc)
                    return
                if attempt == 0:
                    logger.warning("%s: connection lost (%s); reconnecting", self, exc)
                    if isinstance(exc, ConnectionClosed) and exc.reply_code == 320:
                        for callback in self._shutdown_callbacks:
                            callback()
                    self.notify("disconnected", exc)
                    backoff.lost(anyio.current_time())
                else:
                    logger.info("%s: reconnect attempt %d failed: %s", self, attempt, exc)
            attempt += 1
            await anyio.sleep(backoff.next_delay())

    def _give_up(self, exc: BaseException) -> None:
        self.failure = exc if isinstance(exc, AMQPError) else ConnectionClosed(0, str(exc))
        self.notify("disconnected", exc)
        if self.tg is not None:
            self.tg.cancel_scope.cancel()

    async def wait_connection(
        self, timeout: float | None = None, *, allow_closing: bool = False
    ) -> Connection:
        """The current open connection, waiting up to ``reconnect_timeout`` for a recovery.

        Raises:
            CommunicatorClosed: the communicator closed meanwhile.
            ConnectionClosed: no connection within the timeout.

        Cancellation: nothing to clean up.
        """
        limit = self.reconnect_timeout if timeout is None else timeout
        with anyio.move_on_after(limit):
            while True:
                self.check_open(allow_closing)
                connection = self.connection
                if self._up.is_set() and connection is not None and connection.is_open:
                    return connection
                if self._up.is_set():
                    # lost, and the supervisor has not noticed yet
                    await anyio.sleep(0.01)
                else:
                    await self._up.wait()
        self.check_open()
        raise ConnectionClosed(
            0, f"not connected to the broker (waited {limit} s for a reconnection)"
        )

    # ------------------------------------------------------------ shared channels

    async def publisher_channel(self, allow_closing: bool = False) -> Channel:
        """The confirm-mode channel every publish goes through (reopened if closed)."""
        channel = self.publisher
        if channel is not None and channel.is_open:
            return channel
        async with self._channel_lock:
            channel = self.publisher
            if channel is None or not channel.is_open:
                connection = await self.wait_connection(allow_closing=allow_closing)
                channel = self.publisher = await connection.channel(publisher_confirms=True)
            return channel

    def retire_publisher(self, channel: Channel) -> bool:
        """Publish on a new channel from now on; False if ``channel`` was already replaced."""
        if self.publisher is not channel:
            return False
        self.publisher = None
        return True

    async def declarer_channel(self, allow_closing: bool = False) -> Channel:
        """The channel declarations go through (reopened after a broker error closed it)."""
        channel = self._declarer
        if channel is not None and channel.is_open:
            return channel
        async with self._channel_lock:
            channel = self._declarer
            if channel is None or not channel.is_open:
                connection = await self.wait_connection(allow_closing=allow_closing)
                channel = self._declarer = await connection.channel()
            return channel

    # ------------------------------------------------------------ topology

    async def declare(self, operation: Callable[[Channel], Awaitable[Any]], what: str) -> Any:
        """Run a declaration on the declaring channel.

        Raises:
            DeliveryFailed: the broker refused it (the cause is the ``ChannelClosed``).
        """
        channel = await self.declarer_channel()
        try:
            return await operation(channel)
        except ChannelClosed as exc:
            raise DeliveryFailed(f"cannot declare {what}: {exc}") from exc

    async def ensure_exchange(self, exchange: str) -> None:
        """Declare kiwiPy's topic exchange ``exchange`` once per connection."""
        if exchange in self._exchanges:
            return
        try:
            await self.declare(
                lambda ch: ch.exchange_declare(
                    exchange, "topic", durable=False, auto_delete=self.exchange_auto_delete
                ),
                f"exchange {exchange!r}",
            )
        except DeliveryFailed as exc:
            cause = exc.__cause__
            if isinstance(cause, ChannelClosed) and "'auto_delete'" in str(cause):
                mode = "with" if self.exchange_auto_delete else "without"
                other = "without" if self.exchange_auto_delete else "with"
                raise DeliveryFailed(
                    f"cannot declare exchange {exchange!r} {mode} testing_mode: it exists, "
                    f"declared {other} it (testing_mode makes exchanges auto-delete, as "
                    "kiwiPy's does): give testing mode names of its own (e.g. "
                    "kiwi_anyio.testing.pytest_plugin.private_names()), or delete the "
                    f"exchange ({cause})"
                ) from cause
            raise
        self._exchanges.add(exchange)

    def forget_exchange(self, exchange: str) -> None:
        """``exchange`` vanished (auto-delete, a broker restart, an operator): declare it,
        and what depends on it, again on next use."""
        self._exchanges.discard(exchange)
        for callback in self._exchange_callbacks:
            callback(exchange)

    def _forget_topology(self) -> None:
        """A new connection: every channel is gone, and after a broker restart so are the
        non-durable exchanges and queues; declare everything again on first use."""
        self._exchanges.clear()
        self.publisher = None
        self._declarer = None
        for callback in self._new_connection_callbacks:
            callback()

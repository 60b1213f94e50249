"""The anyio driver: a socket, one reader task, one writer task, and the connection.

The only module of :mod:`kiwi_anyio.protocol` that does I/O (its channels, consumers and
messages are in :mod:`kiwi_anyio.protocol._channel`). It feeds received bytes to the
sans-I/O :class:`~kiwi_anyio.protocol.AMQPConnection` and sends what it queues. The reader
never runs user code: it resolves waiters and puts deliveries into per-consumer streams.

Owns: the socket and TLS, the handshake, the reader, writer and heartbeat tasks, connection
failure and close, and the dispatch of each event to its channel. Must not touch: what a
channel does with an event (:mod:`kiwi_anyio.protocol._channel`), the wire format (the core's).

Usage::

    async with kiwi_anyio.protocol.connect("amqp://guest:guest@localhost/") as conn:
        async with conn.channel(publisher_confirms=True) as ch:
            await ch.queue_declare("hello", exclusive=True)
            await ch.basic_publish(b"hi", routing_key="hello")
            async with ch.basic_consume("hello") as consumer:
                async for message in consumer:
                    message.ack()
                    break
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Final

import anyio
import anyio.abc
import anyio.lowlevel
from anyio.streams.tls import TLSStream
from pamqp import commands

from .. import channel as interface
from .._signal import Signal, new_signal
from .._version import __version__
from ..exceptions import (
    AMQPError,
    AuthenticationError,
    ChannelClosed,
    ConnectionClosed,
    ConnectionFailed,
    HeartbeatTimeout,
    ProtocolError,
    VhostNotFound,
)
from . import events as ev
from ._channel import (
    CLOSE_TIMEOUT,
    WRITE_HIGH_WATER,
    Channel,
    Consumer,
    Message,
    _Slot,
)
from ._connection import AMQPConnection, ConnectionState
from .url import ConnectionParameters, parse_url

__all__ = ["Channel", "Connection", "Consumer", "Message", "connect"]

logger = logging.getLogger(__name__)

Properties = commands.Basic.Properties

READ_SIZE: Final = 256 * 1024
# The writer lets ready tasks run up to this many times (or until this much is queued)
# before a send(), so frames queued together go out in one syscall.
COALESCE_ROUNDS: Final = 4
COALESCE_BYTES: Final = 64 * 1024
# what a stream raises when the socket is gone (or closed under the reader by a heartbeat timeout)
_STREAM_ERRORS: Final = (
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    OSError,
    ssl.SSLError,
)


def _coalesce(parts: list[bytes]) -> list[bytes]:
    """Join runs of small buffers (fewer system calls); pass large ones on uncopied."""
    if len(parts) <= 1:
        return parts
    chunks: list[bytes] = []
    run: list[bytes] = []
    for part in parts:
        if len(part) >= COALESCE_BYTES:
            if run:
                chunks.append(run[0] if len(run) == 1 else b"".join(run))
                run = []
            chunks.append(part)
        else:
            run.append(part)
    if run:
        chunks.append(run[0] if len(run) == 1 else b"".join(run))
    return chunks


def _describe(exc: BaseException) -> str:
    """An exception's message, or its cause's when it has none (anyio's BrokenResourceError)."""
    while not str(exc) and exc.__cause__ is not None:
        exc = exc.__cause__
    return str(exc) or type(exc).__name__


#: what OpenSSL says when the bytes it got back are no TLS record (RabbitMQ's plain port
#: answers a ClientHello with its AMQP protocol header)
_NOT_TLS_REASONS: Final = frozenset(
    {"WRONG_VERSION_NUMBER", "HTTP_REQUEST", "RECORD_LAYER_FAILURE"}
)


def _not_tls(exc: BaseException | None) -> bool:
    """True if ``exc`` (or its cause) is OpenSSL finding that the peer does not speak TLS."""
    while exc is not None:
        if isinstance(exc, ssl.SSLError) and (
            exc.reason in _NOT_TLS_REASONS or "WRONG_VERSION_NUMBER" in str(exc)
        ):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _new_core(params: ConnectionParameters) -> AMQPConnection:
    """The sans-I/O core for one attempt to connect with ``params``."""
    return AMQPConnection(
        params.username,
        params.password,
        params.virtual_host,
        heartbeat=params.heartbeat,
        frame_max=params.frame_max,
        channel_max=params.channel_max,
        auth_mechanisms=params.auth_mechanisms,
        connection_name=params.connection_name,
        version=__version__,
        max_message_size=params.max_message_size,
    )


class Connection(interface.Connection["Channel"]):
    """An open AMQP connection. Get one with ``async with kiwi_anyio.protocol.connect(url)``.

    The methods of :class:`kiwi_anyio.channel.Connection`, and what only RabbitMQ has.

    Attributes:
        params: the connection parameters (the password is not in their repr).
    """

    def __init__(self, params: ConnectionParameters) -> None:
        self.params = params
        self._core = _new_core(params)
        self._stream: anyio.abc.ByteStream | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._background: anyio.CancelScope | None = None  # the reader, writer and heartbeats
        self._channels: dict[int, Channel] = {}
        self._opening: dict[int, _Slot] = {}
        self._writer_event: Signal | None = None
        self._writable = anyio.Event()
        self._writable.set()
        self._closed_event = anyio.Event()
        self._failure: AMQPError | None = None
        self._closing = False
        self._last_recv = 0.0
        self._last_send = 0.0
        self.address = params.addresses[0]
        self.server_properties: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"<Connection {self.params.redacted_url()}>"

    def __str__(self) -> str:
        return f"amqp {self.address.host}:{self.address.port}"

    # ------------------------------------------------------------ state

    @property
    def is_open(self) -> bool:
        return self._core.is_open and self._failure is None

    @property
    def is_blocked(self) -> bool:
        return self._core.blocked

    @property
    def heartbeat(self) -> int:
        """The negotiated heartbeat interval in seconds (0: off)."""
        return self._core.heartbeat

    @property
    def frame_max(self) -> int:
        """The negotiated largest frame size."""
        return self._core.frame_max

    @property
    def channel_max(self) -> int:
        """The negotiated highest channel number."""
        return self._core.channel_max

    @property
    def failure(self) -> AMQPError | None:
        return self._failure

    def _check(self) -> None:
        if self._failure is not None:
            raise self._failure
        if not self._core.is_open:
            raise ConnectionClosed(200, "the connection is closed")

    async def wait_closed(self) -> None:
        await self._closed_event.wait()

    # ------------------------------------------------------------ channels

    async def _open_channel(self, publisher_confirms: bool, prefetch: int | None) -> Channel:
        self._check()
        number = self._core.open_channel()
        channel = Channel(self, number, False)
        self._channels[number] = channel
        slot = _Slot()
        channel._waiters.append(slot)
        channel._pending_consumers.append(None)
        self._wake_writer()
        try:
            await slot.wait()
            if publisher_confirms:
                await channel.confirm_select()
            if prefetch is not None:
                await channel.basic_qos(prefetch)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await channel.aclose()
            raise
        return channel

    # ------------------------------------------------------------ writer

    def _wake_writer(self) -> None:
        event = self._writer_event
        if event is not None:
            self._writer_event = None
            event.set()

    async def _wait_writable(self) -> None:
        while self._core.blocked or self._core.bytes_to_send > WRITE_HIGH_WATER:
            self._check()
            if self._writable.is_set():
                self._writable = anyio.Event()
            await self._writable.wait()

    async def _writer(self) -> None:
        assert self._stream is not None
        stream = self._stream
        core = self._core
        checkpoint = anyio.lowlevel.checkpoint
        while True:
            pending = core.bytes_to_send
            if not pending:
                if not self._writable.is_set() and not core.blocked:
                    self._writable.set()
                event = self._writer_event = new_signal()
                await event.wait()
                continue
            # Let the tasks that are ready run first (a consumer acking a batch, publishers,
            # replies): what they queue meanwhile goes out in the same send() instead of one
            # syscall per frame. Stop as soon as a round adds nothing.
            for _ in range(COALESCE_ROUNDS):
                if pending >= COALESCE_BYTES:
                    break
                await checkpoint()
                queued = core.bytes_to_send
                if queued == pending:
                    break
                pending = queued
            chunks = _coalesce(core.data_to_send_parts())
            try:
                for chunk in chunks:
                    await stream.send(chunk)
            except _STREAM_ERRORS as exc:
                self._lost(ConnectionClosed(0, f"connection to {self} lost: {exc!r}"))
                return
            if chunks:
                self._last_send = anyio.current_time()

    async def _run_background(self, scope: anyio.CancelScope) -> None:
        with scope:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(self._reader)
                tasks.start_soon(self._writer)
                tasks.start_soon(self._heartbeat)

    # ------------------------------------------------------------ reader

    async def _reader(self) -> None:
        assert self._stream is not None
        stream = self._stream
        core = self._core
        while True:
            try:
                data = await stream.receive(READ_SIZE)
            except (anyio.EndOfStream, *_STREAM_ERRORS) as exc:
                self._lost(ConnectionClosed(0, f"connection to {self} lost: {exc!r}"))
                return
            frames = core.frames_received
            try:
                events = core.receive_data(data)
            except ProtocolError as exc:
                self._lost(exc)  # connect() still sends the queued Connection.Close
                return
            if core.frames_received != frames:
                # liveness counts complete frames, not bytes: a corrupt frame-size field
                # (or a peer trickling one huge frame) must not keep a dead link "alive"
                self._last_recv = anyio.current_time()
            for event in events:
                self._dispatch(event)
            if core.bytes_to_send:
                self._wake_writer()
            if core.state is ConnectionState.CLOSED:
                return

    def _dispatch(self, event: ev.Event) -> None:
        if isinstance(event, ev.Delivery):
            channel = self._channels.get(event.channel)
            if channel is not None:
                channel._on_delivery(event)
        elif isinstance(event, ev.PublishConfirmed):
            channel = self._channels.get(event.channel)
            if channel is not None:
                channel._on_confirm(event)
        elif isinstance(event, ev.MethodReply | ev.GetOk | ev.ChannelOpened):
            channel = self._channels.get(event.channel)
            if channel is not None:
                channel._on_reply(event if not isinstance(event, ev.MethodReply) else event.method)
        elif isinstance(event, ev.UndecodableDelivery):
            channel = self._channels.get(event.channel)
            logger.warning(
                "%s: rejected delivery %s on channel %s: %s",
                self,
                event.delivery_tag,
                event.channel,
                event.error,
            )
            if channel is not None and event.consumer_tag is None:
                channel._on_reply(event)
        elif isinstance(event, ev.Returned):
            channel = self._channels.get(event.channel)
            if channel is not None:
                channel._on_return(event)
        elif isinstance(event, ev.ChannelClosed):
            channel = self._channels.pop(event.channel, None)
            if channel is not None:
                if event.by_peer:
                    logger.warning(
                        "%s: broker closed channel %s: %s %s",
                        self,
                        event.channel,
                        event.reply_code,
                        event.reply_text,
                    )
                channel._on_closed(
                    ChannelClosed(
                        event.reply_code,
                        event.reply_text,
                        f"channel {event.channel} closed by the broker: "
                        f"{event.reply_code} {event.reply_text}"
                        if event.by_peer
                        else None,
                    )
                )
        elif isinstance(event, ev.ConsumerCancelled):
            channel = self._channels.get(event.channel)
            if channel is not None:
                channel._on_consumer_cancelled(event.consumer_tag)
        elif isinstance(event, ev.ConnectionClosed):
            if event.by_peer:
                self._lost(
                    ConnectionClosed(
                        event.reply_code,
                        event.reply_text,
                        f"the broker closed the connection: {event.reply_code} {event.reply_text}",
                    )
                )
            else:
                self._finish(ConnectionClosed(200, "the connection is closed"))
        elif isinstance(event, ev.Blocked):
            logger.warning("%s: the broker blocked publishing: %s", self, event.reason)
            self._writable = anyio.Event()
        elif isinstance(event, ev.Unblocked):
            logger.info("%s: the broker unblocked publishing", self)
            self._writable.set()

    def _finish(self, error: AMQPError) -> None:
        """Fail everything still pending with ``error`` and mark the connection closed."""
        for channel in list(self._channels.values()):
            channel._on_closed(
                ChannelClosed(getattr(error, "reply_code", 0), str(error), str(error))
            )
        self._channels.clear()
        if self._core.state is not ConnectionState.CLOSED:
            self._core.connection_lost()
        self._writable.set()
        self._closed_event.set()

    def _lost(self, error: AMQPError) -> None:
        """The connection failed: record it, fail everything, stop the tasks."""
        if self._failure is None and not self._closing:
            self._failure = error
            logger.error("%s: %s", self, error)
        self._finish(error)
        if self._tg is not None and not self._closing:  # aclose() stops the tasks itself
            if self._background is not None:
                self._background.cancel()
            self._tg.cancel_scope.cancel()

    # ------------------------------------------------------------ heartbeats

    async def _heartbeat(self) -> None:
        """Send heartbeats every half interval; fail with :class:`HeartbeatTimeout` when no
        complete frame came for two intervals (bytes that complete no frame do not count)."""
        interval = self._core.heartbeat
        if not interval:
            return
        send_every = interval / 2
        dead_after = interval * 2
        while True:
            await anyio.sleep(interval / 4)
            now = anyio.current_time()
            if now - self._last_recv > dead_after:
                self._lost(
                    HeartbeatTimeout(
                        0,
                        f"no complete frame from {self} for {now - self._last_recv:.1f} s "
                        f"(heartbeat {interval} s): the broker is unreachable",
                    )
                )
                if self._stream is not None:
                    await anyio.aclose_forcefully(self._stream)
                return
            if now - self._last_send >= send_every:
                self._core.heartbeat_frame()
                self._last_send = now
                self._wake_writer()

    # ------------------------------------------------------------ open and close

    async def _handshake(self, stream: anyio.abc.ByteStream) -> None:
        core = self._core
        core.initiate()
        await stream.send(core.data_to_send())
        while not core.is_open:
            try:
                data = await stream.receive(READ_SIZE)
            except anyio.EndOfStream:
                data = b""
            try:
                events = core.receive_data(data)
            except ProtocolError:
                leftover = core.data_to_send()  # Connection.Close with the reply code
                if leftover:
                    with anyio.move_on_after(1.0):
                        try:
                            await stream.send(leftover)
                        except Exception:
                            pass
                raise
            if core.bytes_to_send:
                await stream.send(core.data_to_send())
            for event in events:
                if isinstance(event, ev.ConnectionClosed):
                    raise self._handshake_error(event)
                if isinstance(event, ev.ConnectionOpened):
                    self.server_properties = event.server_properties
            if not data:
                raise ConnectionFailed(f"{self} closed during the handshake")

    def _handshake_error(self, event: ev.ConnectionClosed) -> ConnectionFailed:
        where = f"{self.address.host}:{self.address.port}"
        if event.reply_code == 403:
            return AuthenticationError(
                f"the broker at {where} refused the login of user {self.params.username!r} "
                f"({self._core.mechanism}): {event.reply_code} {event.reply_text}"
            )
        if event.reply_code == 530:
            return VhostNotFound(
                f"the broker at {where} refused virtual host {self.params.virtual_host!r}: "
                f"{event.reply_code} {event.reply_text}"
            )
        return ConnectionFailed(
            f"the broker at {where} closed the connection during the handshake: "
            f"{event.reply_code} {event.reply_text}"
        )

    async def _connect_one(self) -> anyio.abc.ByteStream:
        params = self.params
        errors: list[str] = []
        for address in params.addresses:
            self.address = address
            try:
                with anyio.fail_after(params.connection_timeout):
                    stream: anyio.abc.ByteStream = await anyio.connect_tcp(
                        address.host, address.port
                    )
                    if params.tls:
                        # server_hostname "" (server_name_indication=disable): no SNI at all
                        tcp = stream
                        try:
                            stream = await TLSStream.wrap(
                                tcp,
                                server_side=False,
                                hostname=None
                                if params.server_hostname == ""
                                else params.server_hostname or address.host,
                                ssl_context=params.ssl_context or ssl.create_default_context(),
                                standard_compatible=False,
                            )
                        except BaseException:
                            await anyio.aclose_forcefully(tcp)
                            raise
                    try:
                        await self._handshake(stream)
                    except BaseException:
                        await anyio.aclose_forcefully(stream)
                        raise
                return stream
            except (AuthenticationError, VhostNotFound):
                raise
            except ssl.SSLCertVerificationError as exc:
                errors.append(
                    f"{address.host}:{address.port}: TLS certificate verification failed: "
                    f"{exc.verify_message or exc}"
                )
            except TimeoutError:
                errors.append(
                    f"{address.host}:{address.port}: timed out after {params.connection_timeout} s"
                )
            except (OSError, ssl.SSLError, anyio.BrokenResourceError, ConnectionFailed) as exc:
                if params.tls and _not_tls(exc):
                    errors.append(
                        f"{address.host}:{address.port}: this port does not speak TLS "
                        f"({_describe(exc)}): is it a plain AMQP port? (use amqp:// without TLS)"
                    )
                else:
                    errors.append(f"{address.host}:{address.port}: {_describe(exc)}")
            except ProtocolError as exc:
                errors.append(f"{address.host}:{address.port}: protocol error: {exc}")
            self._core = _new_core(params)
        raise ConnectionFailed(f"cannot connect to {params.redacted_url()}: " + "; ".join(errors))

    async def aclose(self) -> None:
        # No CloseOk is awaited when the broker blocked the connection or it already failed.
        if self._closing:
            return
        self._closing = True
        with anyio.CancelScope(shield=True):
            if self._core.is_open and self._failure is None and not self._core.blocked:
                self._core.close()
                self._wake_writer()
                with anyio.move_on_after(CLOSE_TIMEOUT):
                    await self._closed_event.wait()
            self._finish(ConnectionClosed(200, "the connection is closed"))
            # Stop the background tasks only: aclose() may be called from the user's block,
            # which must go on (and see ConnectionClosed), not be cancelled.
            if self._background is not None:
                self._background.cancel()
            if self._stream is not None:
                # e.g. the Connection.Close queued after a protocol error: send it first
                leftover = self._core.data_to_send()
                if leftover and not isinstance(self._failure, HeartbeatTimeout):
                    with anyio.move_on_after(1.0):
                        try:
                            await self._stream.send(leftover)
                        except Exception:
                            pass
                await anyio.aclose_forcefully(self._stream)


@asynccontextmanager
async def connect(
    url: str | ConnectionParameters = "amqp://guest:guest@localhost:5672/",
    *,
    ssl_context: ssl.SSLContext | None = None,
    **options: Any,
) -> AsyncIterator[Connection]:
    """Connect to an AMQP 0-9-1 broker: ``async with connect(url) as conn:``.

    Args:
        url: ``amqp://`` or ``amqps://`` URL (see :func:`~kiwi_anyio.protocol.url.parse_url`)
            or ready :class:`ConnectionParameters`.
        ssl_context: the TLS context for ``amqps://``.
        **options: any :class:`ConnectionParameters` field, overriding the URL.

    The connection lives in a task group (reader, writer, heartbeats). If it fails (socket
    lost, heartbeat timeout, broker close, protocol error) the block is cancelled and the
    failure is raised from ``async with``. Leaving the block closes the connection.

    Raises:
        InvalidURL: the URL is malformed.
        AuthenticationError: the broker refused the credentials.
        VhostNotFound: the virtual host does not exist or is not allowed.
        ConnectionFailed: no host could be reached (every host and its error are named).
    """
    params = (
        url
        if isinstance(url, ConnectionParameters)
        else parse_url(url, ssl_context=ssl_context, **options)
    )
    if params.tls and not params.verify:
        logger.warning(
            "TLS certificate verification is OFF for %s (verify=verify_none)", params.redacted_url()
        )
    elif params.tls and params.ssl_context is not None and not params.ssl_context.check_hostname:
        logger.warning(
            "TLS host name verification is OFF for %s: any certificate from a trusted CA is "
            "accepted",
            params.redacted_url(),
        )
    conn = Connection(params)
    stream = await conn._connect_one()
    conn._stream = stream
    now = anyio.current_time()
    conn._last_recv = conn._last_send = now
    conn.server_properties = conn._core.server_properties
    logger.debug("%s: connected (heartbeat %s s)", conn, conn.heartbeat)
    user_exc: BaseException | None = None
    try:
        async with anyio.create_task_group() as tg:
            conn._tg = tg
            # shielded: only this connection stops its reader and writer (a cancelled caller
            # must still see the Connection.Close/CloseOk exchange through)
            conn._background = anyio.CancelScope(shield=True)
            tg.start_soon(conn._run_background, conn._background)
            try:
                yield conn
            except BaseException as exc:
                user_exc = exc
            finally:
                await conn.aclose()
    finally:
        with anyio.CancelScope(shield=True):
            leftover = conn._core.data_to_send()  # e.g. Connection.Close after a protocol error
            if leftover and not isinstance(conn._failure, HeartbeatTimeout):
                with anyio.move_on_after(1.0):
                    try:
                        await stream.send(leftover)
                    except Exception:
                        pass
            await anyio.aclose_forcefully(stream)
    failure = conn._failure
    if failure is not None and (
        user_exc is None or isinstance(user_exc, AMQPError | anyio.get_cancelled_exc_class())
    ):
        raise failure from None
    if user_exc is not None:
        raise user_exc

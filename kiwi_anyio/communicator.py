"""The Communicator: kiwiPy's task queues, broadcasts and RPC, on trio and asyncio.

::

    async with kiwi_anyio.connect("amqp://localhost") as comm:
        await comm.add_rpc_subscriber(lambda comm, msg: msg * 2, "double")
        fut = await comm.rpc_send("double", 21)
        assert await fut == 42

The communicator lives in a task group: every consumer (task, RPC, broadcast and reply
queues) is a task it owns, and every running subscriber call is a child of that consumer.
Leaving ``async with`` cancels and joins them all; a task whose handling had not finished
is requeued (never acknowledged), pending result futures fail with
:class:`~kiwi_anyio.CommunicatorClosed`, and the connection closes.

This module is a thin facade: it builds the layers (:mod:`kiwi_anyio.robust`: the link,
consumers, publisher; :mod:`kiwi_anyio.patterns`: requests, serving, tasks, RPC, broadcasts;
:mod:`kiwi_anyio.hooks`), owns the task group and its lifetime, and forwards kiwiPy's
method names. ``docs/architecture.md`` draws the layers and one task's path through them.

The wire format is kiwiPy 0.9's (see :mod:`kiwi_anyio._wire`), so kiwi_anyio and kiwiPy
processes on one broker work together.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Literal, Self, overload

import anyio
import anyio.abc

from . import _wire as wire
from . import typed
from ._pending import DEFAULT, Timeout
from .channel import Connection
from .codecs import YAML, Codec, codec_from_functions, decoder_for
from .exceptions import AMQPError, CommunicatorClosed
from .futures import Future
from .hooks import Hooks
from .patterns.broadcast import Broadcasts
from .patterns.pull import IncomingTask
from .patterns.redelivery import DEFAULT_MAX_DELIVERIES
from .patterns.requests import Requests
from .patterns.rpc import Rpc
from .patterns.serving import Serving, Subscriber
from .patterns.tasks import UNSET, TaskQueue, Tasks, _Unset
from .protocol import connect as amqp_connect
from .protocol import parse_url
from .protocol.url import ConnectionParameters
from .robust.consumer import Consumers
from .robust.link import Link, LinkState
from .robust.publisher import DEFAULT_NACK_RETRY, Publisher
from .robust.settling import SettleBounds

if TYPE_CHECKING:
    from .blocking import BlockingCommunicator

__all__ = ["Communicator", "IncomingTask", "TaskQueue", "connect"]

DEFAULT_URL: Final = "amqp://guest:guest@127.0.0.1/"
DEFAULT_TASK_PREFETCH: Final = 1
DEFAULT_RPC_PREFETCH: Final = 256
DEFAULT_LOST_REPLY_GRACE: Final = 30.0  # seconds a reply that may be lost is still awaited


def _log_level(level: int | str | None) -> int | None:
    """A logging level given as a number or a name (``"WARNING"``), or None."""
    if level is None:
        return None
    if isinstance(level, str):
        found = logging.getLevelNamesMapping().get(level.upper())
        if found is None:
            raise ValueError(f"unknown log level {level!r}")
        return found
    if isinstance(level, bool) or not isinstance(level, int):
        raise TypeError(f"a log level is an int, a level name or None, not {level!r}")
    return level


class Communicator:
    """kiwiPy's communicator for trio and asyncio. Create it with :func:`connect`.

    Args:
        url: ``amqp://`` or ``amqps://`` URL of the broker.
        message_exchange: the exchange of RPCs and broadcasts.
        task_exchange: the exchange of task queues.
        task_queue: the default task queue.
        task_prefetch_size: byte limit of unacknowledged tasks (0: none).
        task_prefetch_count: tasks a worker handles at once (kiwiPy's default 0 means no
            limit; ours is 1).
        rpc_prefetch_count: RPC calls handled at once per RPC subscriber; more wait in the
            broker, so a flood of calls cannot exhaust this process's memory. 0: no limit
            (kiwiPy's behaviour). A subscriber that awaits RPCs to itself needs a limit
            above its nesting depth.
        encoder: a kiwiPy-style encoder ``obj -> bytes`` (with ``decoder``).
        decoder: a kiwiPy-style decoder ``bytes -> obj``.
        codec: a :class:`~kiwi_anyio.codecs.Codec` instead of encoder/decoder (default:
            YAML written as kiwiPy writes it, decoded safely).
        queue_expires: ms an unused RPC queue lives (``x-expires``).
        testing_mode: auto-delete exchanges and task queues that expire (``x-expires``),
            as kiwiPy (transient on RabbitMQ 3.x, durable on 4.x).
        queue_type: ``"quorum"`` to declare task queues as quorum queues (new queues only).
        reconnect: recover from a lost connection (on by default): reconnect with backoff,
            redeclare the topology and resume every subscriber. A refused login or an
            explicit close never triggers it.
        reconnect_timeout: how long a send waits for a recovery before it fails.
        nack_retry_timeout: how long a send the broker nacks is sent again (with backoff)
            before it fails with ``DeliveryFailed``: a quorum queue nacks for seconds while
            it elects a new leader after a node went down. 0: fail at the first nack
            (kiwiPy's behaviour; for a queue with ``overflow=reject-publish`` used as
            backpressure).
        reconnect_max_delay: the longest pause between reconnection attempts (seconds).
            The first attempt follows the loss at once (within 50 ms); later ones back off
            from 0.25 s, doubling, jittered; a link that drops within 1 s of coming up goes
            on backing off instead of starting at once again.
        request_timeout: the default ``timeout`` of :meth:`task_send` and :meth:`rpc_send`
            (seconds): a future with no reply by then fails with
            :class:`~kiwi_anyio.RequestTimeout`. ``None`` (the default, as kiwiPy): wait
            until the reply comes, the request is known lost, or the communicator closes.
        task_max_deliveries: deliveries of one task without an answer before it is moved to
            its queue's dead-letter queue (``<queue>.dead-letters``) and its sender gets
            :class:`~kiwi_anyio.TaskDeadLettered` (default 10; ``None``: no limit, kiwiPy's
            behaviour). See ``docs/failures.md``.
        telemetry: OpenTelemetry traces and metrics (:mod:`kiwi_anyio.telemetry`, semantic
            conventions v1.44): ``None`` (the default) when ``opentelemetry-api`` is
            importable (``pip install 'kiwi-anyio[otel]'``; the SDK and exporters are the
            application's), ``True`` to require it, ``False`` for none.
        lost_reply_grace: once a request's reply may have been lost (the reply queue was
            gone after a reconnection; the broker restarted while an RPC call was waiting),
            how long its future stays open for a reply that may still come, before it fails
            with :class:`~kiwi_anyio.RequestLost` (seconds).
        drain_timeout: on leaving ``async with``, stop taking new messages and let the
            subscriber calls in progress finish for up to this many seconds before they are
            cancelled (and their tasks requeued). Default 0: cancel at once.
        subscriber_error_log_level: the level (``logging.WARNING``, or a name:
            ``"WARNING"``) at which an exception a task, RPC or broadcast subscriber raised
            is logged (once, with its traceback, on the ``kiwi_anyio.communicator``
            logger). Default ``None``: ``INFO`` when its sender gets it back as a
            :class:`~kiwi_anyio.RemoteException` (an RPC, a task), ``ERROR`` when nobody
            does (a task sent with ``no_reply=True``, a broadcast). The record carries the
            message's context as attributes (``queue``, ``identifier``,
            ``correlation_id``, ``message_id`` ...: ``docs/observability.md``).
        blocking_backend: the event loop (``"asyncio"`` or ``"trio"``) that runs in the
            background thread when the communicator is used with a plain ``with``.
        ssl_context: TLS context for ``amqps://``.
        **connection_options: any :class:`~kiwi_anyio.protocol.ConnectionParameters` field
            (``heartbeat``, ``connection_timeout`` …).
    """

    def __init__(
        self,
        url: str | ConnectionParameters | None = None,
        *,
        message_exchange: str = wire.MESSAGE_EXCHANGE,
        task_exchange: str = wire.TASK_EXCHANGE,
        task_queue: str = wire.TASK_QUEUE,
        task_prefetch_size: int = 0,
        task_prefetch_count: int = DEFAULT_TASK_PREFETCH,
        rpc_prefetch_count: int = DEFAULT_RPC_PREFETCH,
        encoder: Callable[[Any], bytes] | None = None,
        decoder: Callable[[bytes], Any] | None = None,
        codec: Codec | None = None,
        queue_expires: int = wire.QUEUE_EXPIRES,
        testing_mode: bool = False,
        queue_type: str | None = None,
        blocking_backend: str = "asyncio",
        reconnect: bool = True,
        reconnect_timeout: float = 60.0,
        nack_retry_timeout: float = DEFAULT_NACK_RETRY,
        reconnect_max_delay: float = 30.0,
        drain_timeout: float = 0.0,
        subscriber_error_log_level: int | str | None = None,
        request_timeout: float | None = None,
        lost_reply_grace: float = DEFAULT_LOST_REPLY_GRACE,
        task_max_deliveries: int | None = DEFAULT_MAX_DELIVERIES,
        telemetry: bool | None = None,
        ssl_context: Any = None,
        **connection_options: Any,
    ) -> None:
        self._memory: str | None = None
        if isinstance(url, ConnectionParameters):
            self._params: ConnectionParameters | None = url
        elif url is not None and url.startswith("memory://"):
            if connection_options:
                raise TypeError(f"memory:// takes no connection options: {connection_options}")
            self._memory = url[len("memory://") :].strip("/") or "default"
            self._params = None
        else:
            self._params = parse_url(
                url or DEFAULT_URL, ssl_context=ssl_context, **connection_options
            )
        if codec is None:
            if encoder is not None or decoder is not None:
                codec = codec_from_functions(encoder or YAML.encode, decoder or YAML.decode)
            else:
                codec = YAML
        self._codec = codec
        decoder_for(None, codec)  # validates the codec choice early
        self.message_exchange = message_exchange
        self.task_exchange = task_exchange
        self.task_queue_name = task_queue
        self.task_prefetch_size = task_prefetch_size
        self.task_prefetch_count = task_prefetch_count
        self.rpc_prefetch_count = rpc_prefetch_count
        self.queue_expires = queue_expires
        self.testing_mode = testing_mode
        self.queue_type = queue_type
        self.blocking_backend = blocking_backend
        self.drain_timeout = drain_timeout
        self.request_timeout = request_timeout
        self.task_max_deliveries = task_max_deliveries
        #: the seam every publish and delivery passes (see :mod:`kiwi_anyio.hooks`)
        self.hooks = Hooks()
        self._link = link = Link(
            self._open_connection,
            name=self.url,
            reconnect=reconnect,
            reconnect_timeout=reconnect_timeout,
            reconnect_max_delay=reconnect_max_delay,
            exchange_auto_delete=testing_mode,
        )
        bounds = SettleBounds()
        self._consumers = consumers = Consumers(link, bounds, self.hooks.wrap)
        self._publisher = publisher = Publisher(
            link, self.hooks, nack_retry_timeout=nack_retry_timeout
        )
        self._serving = serving = Serving(
            link,
            publisher,
            bounds,
            codec,
            subscriber_error_level=_log_level(subscriber_error_log_level),
        )
        serving.callback_comm = self
        self._requests = requests = Requests(
            link,
            consumers,
            publisher,
            reply_queue=f"{message_exchange}-reply-{uuid.uuid4()}",
            content_type=codec.content_type,
            decode=serving.decode,
            lost_reply_grace=lost_reply_grace,
        )
        self._tasks = Tasks(
            link,
            consumers,
            requests,
            serving,
            codec,
            publisher,
            exchange=task_exchange,
            testing_mode=testing_mode,
            queue_type=queue_type,
            timeout=self._timeout,
        )
        self._rpc = Rpc(
            link,
            consumers,
            requests,
            serving,
            codec,
            exchange=message_exchange,
            prefetch_count=rpc_prefetch_count,
            queue_expires=queue_expires,
            timeout=self._timeout,
        )
        self._broadcasts = Broadcasts(
            link, consumers, publisher, serving, codec, exchange=message_exchange
        )
        self._cm: Any = None
        self._blocking: BlockingCommunicator | None = None
        if telemetry is not False:  # None: on when opentelemetry-api is importable
            from . import telemetry as _telemetry

            _telemetry.install(self, required=telemetry is True)

    # ------------------------------------------------------------ settings kept on the layers

    @property
    def reconnect(self) -> bool:
        """Recover from a lost connection."""
        return self._link.reconnect

    @property
    def reconnect_timeout(self) -> float:
        """How long a send waits for a recovery before it fails (seconds)."""
        return self._link.reconnect_timeout

    @property
    def reconnect_max_delay(self) -> float:
        """The longest pause between reconnection attempts (seconds)."""
        return self._link.reconnect_max_delay

    @property
    def nack_retry_timeout(self) -> float:
        """How long a nacked send is sent again before it fails (seconds)."""
        return self._publisher.nack_retry_timeout

    @property
    def lost_reply_grace(self) -> float:
        """How long a reply that may be lost is still awaited (seconds)."""
        return self._requests.lost_reply_grace

    @property
    def subscriber_error_log_level(self) -> int | None:
        """The level at which a subscriber's exception is logged (see the option; None:
        ``INFO`` or ``ERROR``, by whether its sender gets it back); settable, with a
        number, a level name or None."""
        return self._serving.subscriber_error_level

    @subscriber_error_log_level.setter
    def subscriber_error_log_level(self, level: int | str | None) -> None:
        self._serving.subscriber_error_level = _log_level(level)

    @property
    def _pending(self) -> Any:
        """The futures waiting for replies (for tests and debugging)."""
        return self._requests.pending

    @property
    def _callback_comm(self) -> Any:
        return self._serving.callback_comm

    @_callback_comm.setter
    def _callback_comm(self, value: Any) -> None:
        self._serving.callback_comm = value

    @property
    def _broadcast_queue(self) -> str | None:
        return self._broadcasts.queue

    def _entered(self, method: str) -> None:
        """Fail at once, with how to write it, when used before ``async with``/``with``
        (kiwiPy's ``comm = kiwipy.connect(url); comm.rpc_send(...).result()`` style)."""
        if self._link.state is LinkState.NEW:
            raise CommunicatorClosed(
                f"{method}() on a communicator that is not open: use it inside "
                "`async with kiwi_anyio.connect(url) as comm:` (await the call), or, for "
                "kiwiPy's synchronous API, `with kiwi_anyio.connect(url) as comm:` (then "
                f"comm.{method}(...) returns at once, e.g. comm.rpc_send(...).result()); "
                "without a with block: comm = kiwi_anyio.connect(url).__enter__() and "
                "comm.close() at the end"
            )

    def _timeout(self, timeout: Timeout) -> float | None:
        return self.request_timeout if timeout is DEFAULT else timeout

    @property
    def url(self) -> str:
        """The broker URL, with the password hidden."""
        if self._params is None:
            return f"memory://{self._memory}"
        return self._params.redacted_url()

    def __repr__(self) -> str:
        return f"<Communicator {self.url} {self._link.state.value}>"

    # ------------------------------------------------------------ lifetime

    async def __aenter__(self) -> Self:
        """Connect (raises the connection's error) and start serving.

        Cancellation: the connection is closed again.
        """
        if self._link.state is not LinkState.NEW:
            raise RuntimeError("a Communicator can be entered only once")
        self._cm = self._lifetime()
        await self._cm.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        """Close: stop the consumers (``drain_timeout``), answer finished requests, requeue
        the rest, fail pending futures with ``CommunicatorClosed``, close the connection."""
        result: bool | None = await self._cm.__aexit__(exc_type, exc, tb)
        return result

    def __enter__(self) -> BlockingCommunicator:
        """Synchronous use: ``with kiwi_anyio.connect(url) as comm:`` gives kiwiPy's
        ``RmqThreadCommunicator`` API (:class:`~kiwi_anyio.blocking.BlockingCommunicator`),
        with the event loop in a background thread."""
        if self._link.state is not LinkState.NEW:
            raise RuntimeError("a Communicator can be entered only once")
        # built on demand: blocking.py uses this module, this module does not need it
        from .blocking import open_blocking

        self._blocking = open_blocking(self, self.blocking_backend)
        return self._blocking

    def __exit__(self, *exc_info: object) -> None:
        if self._blocking is not None:
            self._blocking.close()

    @asynccontextmanager
    async def _lifetime(self) -> AsyncIterator[None]:
        link = self._link
        user_exc: BaseException | None = None
        link.move_to(LinkState.CONNECTING)
        try:
            async with anyio.create_task_group() as tg:
                link.tg = tg
                tg.start_soon(self._requests.pending.run)
                try:
                    await tg.start(link.supervise)
                    link.move_to(LinkState.OPEN)
                    yield
                except BaseException as exc:
                    user_exc = exc
                finally:
                    link.move_to(LinkState.CLOSING)
                    with anyio.CancelScope(shield=True):
                        await self._consumers.stop_all(
                            self.drain_timeout, keep=self._requests.consumer
                        )
                        await self._rpc.delete_queues()
                    self._fail_pending()
                    tg.cancel_scope.cancel()
        finally:
            self._fail_pending()
            link.move_to(LinkState.CLOSED)
        failure = link.failure
        if failure is not None and (
            user_exc is None or isinstance(user_exc, AMQPError | anyio.get_cancelled_exc_class())
        ):
            raise failure from None
        if user_exc is not None:
            raise user_exc

    def _fail_pending(self) -> None:
        self._requests.pending.fail_all(CommunicatorClosed("the communicator closed"))

    def _open_connection(self, attempt: int = 0) -> AbstractAsyncContextManager[Connection]:
        if self._memory is not None:
            from . import memory

            return memory.connect(self._memory)
        params = self._params
        assert params is not None
        shift = attempt % len(params.addresses)
        if shift:  # rotate through the hosts of the URL
            params = dataclasses.replace(
                params, addresses=params.addresses[shift:] + params.addresses[:shift]
            )
        return amqp_connect(params)

    # ------------------------------------------------------------ the link

    def add_connection_listener(
        self, listener: Callable[[str, BaseException | None], object]
    ) -> None:
        """Call ``listener(event, error)`` on ``"connected"``, ``"disconnected"`` (with the
        error), ``"recovered"`` and ``"closed"`` (kiwiPy's close callback; the error is the
        connection failure that ended the communicator, if any)."""
        self._link.add_listener(listener)

    def remove_connection_listener(
        self, listener: Callable[[str, BaseException | None], object]
    ) -> None:
        """Stop calling a connection listener."""
        self._link.remove_listener(listener)

    @property
    def is_connected(self) -> bool:
        """True while the link to the broker is up (False while recovering)."""
        return self._link.is_connected

    def is_closed(self) -> bool:
        """True once the communicator has closed (or is closing)."""
        return self._link.state in (LinkState.CLOSING, LinkState.CLOSED)

    @property
    def server_properties(self) -> dict[str, Any]:
        """The broker's properties (``product``, ``version``, ``platform`` …)."""
        self._link.check_open()
        assert self._link.connection is not None
        return self._link.connection.server_properties

    # ------------------------------------------------------------ tasks

    def task_queue(
        self,
        name: str,
        prefetch_count: int | None = None,
        prefetch_size: int = 0,
        *,
        max_deliveries: int | _Unset | None = UNSET,
        consumer_timeout: float | _Unset | None = UNSET,
    ) -> TaskQueue:
        """A task queue on the task exchange (declared durable on first use).

        Args:
            name: the queue.
            prefetch_count: tasks a subscriber handles at once (default: the
                communicator's ``task_prefetch_count``).
            prefetch_size: byte limit of unacknowledged tasks (0: none).
            max_deliveries: deliveries of one task without an answer (its workers died,
                or it raised :class:`~kiwi_anyio.Retry`) before it is dead-lettered
                (default: the communicator's ``task_max_deliveries``; ``None``: no limit).
            consumer_timeout: seconds a delivered task may stay unacknowledged before the
                broker gives up on it and closes the channel (``x-consumer-timeout`` on the
                consumer, honoured by RabbitMQ 3.12 and later; on 4.3 only by quorum
                queues, classic queues there have none). ``None``: the longest the broker
                takes (about 24.8 days). Default: the broker's (``consumer_timeout``, 30
                minutes unless configured). A channel closed for this timeout is logged as
                such; handlers still running finish and their replies go out.

        The first call for a name fixes its options; later calls return the same queue.
        """
        self._link.check_open()
        return self._tasks.queue(
            name,
            self.task_prefetch_count if prefetch_count is None else prefetch_count,
            prefetch_size,
            self.task_max_deliveries if isinstance(max_deliveries, _Unset) else max_deliveries,
            consumer_timeout,
        )

    def _default_queue(self) -> TaskQueue:
        return self.task_queue(
            self.task_queue_name, self.task_prefetch_count, self.task_prefetch_size
        )

    @overload
    def task_send(
        self, task: Any, no_reply: Literal[False] = False, *, timeout: Timeout = DEFAULT
    ) -> Coroutine[Any, Any, Future[Any]]: ...
    @overload
    def task_send(
        self, task: Any, no_reply: Literal[True], *, timeout: Timeout = DEFAULT
    ) -> Coroutine[Any, Any, None]: ...
    @overload
    def task_send(
        self, task: Any, no_reply: bool, *, timeout: Timeout = DEFAULT
    ) -> Coroutine[Any, Any, Future[Any] | None]: ...
    def task_send(
        self, task: Any, no_reply: bool = False, *, timeout: Timeout = DEFAULT
    ) -> Coroutine[Any, Any, Future[Any] | None]:
        """Send a task to the default queue (see :meth:`TaskQueue.task_send`).

        Cancellation: cancelled before the broker's confirm, the task may or may not have
        been queued, and no future is returned. Cancelling an ``await`` of the future
        cancels the future (its result is dropped; the task itself is still done); awaiting
        it again raises ``concurrent.futures.CancelledError``.
        """
        self._entered("task_send")
        return self._default_queue().task_send(task, no_reply, timeout=timeout)

    def add_task_subscriber(
        self, subscriber: Subscriber, identifier: str | None = None
    ) -> Coroutine[Any, Any, str]:
        """Subscribe to the default task queue (see :meth:`TaskQueue.add_task_subscriber`).

        Cancellation: the subscriber is not added.
        """
        self._entered("add_task_subscriber")
        return self._default_queue().add_task_subscriber(subscriber, identifier)

    async def remove_task_subscriber(self, identifier: str) -> None:
        """Remove a subscriber of the default task queue.

        Cancellation: shielded while its consumer stops.
        """
        self._link.check_open()
        await self._default_queue().remove_task_subscriber(identifier)

    def task_subscriber(self, subscriber: Subscriber, identifier: str | None = None) -> Any:
        """``async with comm.task_subscriber(fn) as ident:`` on the default task queue."""
        return self._default_queue().task_subscriber(subscriber, identifier)

    # ------------------------------------------------------------ RPC

    def rpc_send(
        self, recipient_id: str, msg: Any, *, timeout: Timeout = DEFAULT
    ) -> Coroutine[Any, Any, Future[Any]]:
        """Call the RPC subscriber ``recipient_id``; returns a future of its reply.

        Args:
            recipient_id: the subscriber's identifier.
            msg: the message (any value the codec can encode).
            timeout: seconds the future waits for the reply before it fails with
                :class:`~kiwi_anyio.RequestTimeout`; a call not taken by the subscriber by
                then expires in the broker (it is not handled late). ``None``: no limit.
                Default: the communicator's ``request_timeout``.

        Raises:
            UnroutableError: no subscriber with this identifier exists.

        Cancellation: cancelled before the broker's confirm, the call may or may not have
        been sent, and no future is returned. Cancelling an ``await`` of the future
        cancels the future (its reply is dropped); awaiting it again raises
        ``concurrent.futures.CancelledError``.
        """
        self._entered("rpc_send")
        return self._rpc.send(recipient_id, typed.to_plain(msg), timeout=timeout)

    def add_rpc_subscriber(
        self, subscriber: Subscriber, identifier: str | None = None
    ) -> Coroutine[Any, Any, str]:
        """Add ``subscriber(comm, msg)`` for RPCs to ``identifier``; returns the identifier.

        Raises:
            DuplicateSubscriberIdentifier: this identifier is taken, here or by another
                kiwi_anyio process on the broker.
            ValueError: the identifier contains ``*`` or ``#`` (they would act as wildcards).

        Cancellation: the subscriber is not added.
        """
        self._entered("add_rpc_subscriber")
        return self._rpc.add(typed.adapt_subscriber(subscriber, "rpc"), identifier)

    async def remove_rpc_subscriber(self, identifier: str) -> None:
        """Remove an RPC subscriber (and delete its queue).

        Raises:
            ValueError: no subscriber has this identifier.

        Cancellation: shielded while its consumer stops and its queue is deleted.
        """
        await self._rpc.remove(identifier)

    def rpc_subscriber(
        self, subscriber: Subscriber, identifier: str | None = None
    ) -> AbstractAsyncContextManager[str]:
        """``async with comm.rpc_subscriber(fn, "id") as ident:``; removed on exit."""
        return self._rpc.scoped(subscriber, identifier)

    # ------------------------------------------------------------ broadcasts

    def broadcast_send(
        self,
        body: Any,
        sender: Any = None,
        subject: Any = None,
        correlation_id: Any = None,
    ) -> Coroutine[Any, Any, bool]:
        """Send a broadcast to every subscriber whose filters match; returns True once the
        broker confirmed it (nobody listening is not an error).

        Cancellation: the broadcast may or may not have been sent.
        """
        self._entered("broadcast_send")
        return self._broadcasts.send(typed.to_plain(body), sender, subject, correlation_id)

    def add_broadcast_subscriber(
        self, subscriber: Subscriber, identifier: str | None = None
    ) -> Coroutine[Any, Any, str]:
        """Add ``subscriber(comm, body, sender, subject, correlation_id)``; returns its id.

        Wrap it in a :class:`~kiwi_anyio.BroadcastFilter` to receive only some subjects or
        senders. Subscribers receive broadcasts in order; one that raises is logged and the
        others still get the message.

        Cancellation: the subscriber is not added.
        """
        self._entered("add_broadcast_subscriber")
        return self._broadcasts.add(typed.adapt_subscriber(subscriber, "broadcast"), identifier)

    async def remove_broadcast_subscriber(self, identifier: str) -> None:
        """Remove a broadcast subscriber; the last one removed deletes the queue, so no
        broadcasts pile up for nobody.

        Raises:
            ValueError: no subscriber has this identifier.

        Cancellation: shielded while the queue is deleted.
        """
        await self._broadcasts.remove(identifier)

    def broadcast_subscriber(
        self, subscriber: Subscriber, identifier: str | None = None
    ) -> AbstractAsyncContextManager[str]:
        """``async with comm.broadcast_subscriber(fn) as ident:``; removed on exit."""
        return self._broadcasts.scoped(subscriber, identifier)


def connect(url: str | ConnectionParameters | None = None, **options: Any) -> Communicator:
    """Create a communicator: ``async with kiwi_anyio.connect(url) as comm:``.

    ``url`` defaults to the ``KIWI_ANYIO_URL`` environment variable, else kiwiPy's
    ``amqp://guest:guest@127.0.0.1/``. Options are those of :class:`Communicator`.
    """
    if url is None:
        url = os.environ.get("KIWI_ANYIO_URL") or DEFAULT_URL
    return Communicator(url, **options)

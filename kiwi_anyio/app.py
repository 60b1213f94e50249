"""An application object: subscribers declared up front, served by one call.

::

    app = kiwi_anyio.App(url="amqp://localhost")

    @app.task(queue="jobs", prefetch_count=4)
    async def job(comm, task):
        return task * 2

    @app.rpc("inc")
    async def inc(comm, n):
        return n + 1

    app.run()  # or `await app.serve()` in a task group, or `kiwi-anyio worker module:app`

The decorators only record what to subscribe; nothing connects until :meth:`App.serve`.
Handlers keep kiwiPy's signatures (``fn(comm, task)``, ``fn(comm, msg)``,
``fn(comm, body, sender, subject, correlation_id)``) and are returned unchanged, so they can be
called directly in unit tests.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
import types
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar, overload

import anyio
import anyio.abc

from .communicator import Communicator
from .communicator import connect as kiwi_connect
from .filters import BroadcastFilter

__all__ = ["App", "AppStatus"]

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

#: How long each ``on_shutdown`` hook may run (seconds); it runs shielded from cancellation.
SHUTDOWN_HOOK_TIMEOUT = 10.0
#: The default ``drain_timeout`` of an app: fits in Kubernetes' default 30 s grace period.
DEFAULT_DRAIN_TIMEOUT = 25.0

Hook = Callable[..., Any]
Lifespan = Callable[["App"], AbstractAsyncContextManager[Any]]


@dataclass(frozen=True)
class AppStatus:
    """What :attr:`App.status` reports (and the worker's health check serves).

    ``state`` is ``"stopped"``, ``"starting"``, ``"running"`` (every subscriber consuming) or
    ``"stopping"`` (draining); ``connected`` is True while the link to the broker is up.
    """

    state: str = "stopped"
    connected: bool = False

    @property
    def consuming(self) -> bool:
        """True while every subscriber is subscribed and taking messages."""
        return self.state == "running"

    @property
    def healthy(self) -> bool:
        """Connected and consuming: what a liveness/readiness probe should check."""
        return self.connected and self.consuming


@dataclass
class _Task:
    fn: Callable[..., Any]
    queue: str | None
    prefetch_count: int | None
    identifier: str | None


@dataclass
class _Rpc:
    fn: Callable[..., Any]
    identifier: str


@dataclass
class _Broadcast:
    fn: Callable[..., Any]
    subject: Any
    sender: Any
    identifier: str | None


@dataclass
class _Serving:
    """The state of one :meth:`App.serve` call."""

    stop: anyio.Event = field(default_factory=anyio.Event)
    startup: anyio.CancelScope = field(default_factory=anyio.CancelScope)


class App:
    """A kiwi_anyio application: task, RPC and broadcast subscribers plus lifecycle hooks,
    declared without a connection and served by :meth:`serve`, :meth:`run` or
    ``kiwi-anyio worker module:app``.

    Args:
        url: the broker URL (``--url`` and ``KIWI_ANYIO_URL`` take precedence in the worker;
            default: ``KIWI_ANYIO_URL``, else ``amqp://guest:guest@127.0.0.1/``).
        name: a name for logs and the health report (default: ``"kiwi-anyio app"``).
        drain_timeout: on a graceful stop, how long running handlers may go on before they
            are cancelled and their tasks requeued (seconds; default 25, which fits in
            Kubernetes' default 30 s grace period).
        lifespan: ``lifespan(app)`` returning an async context manager entered before the
            connection opens and exited after it closed (and after the ``on_shutdown``
            hooks): for resources that must outlive every handler, such as a database pool
            kept in :attr:`state`. Also settable with the :meth:`lifespan_context` decorator.
        **options: options of :func:`kiwi_anyio.connect` (``task_prefetch_count``,
            ``codec``, ``heartbeat``, ``message_exchange`` ...).

    Attributes:
        state: a namespace for the app's resources (``app.state.pool = ...``).
        comm: the communicator while the app is served, else ``None``.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        name: str | None = None,
        drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
        lifespan: Lifespan | None = None,
        **options: Any,
    ) -> None:
        self.url = url
        self.name = name or "kiwi-anyio app"
        self.drain_timeout = drain_timeout
        self.options = options
        self.state = types.SimpleNamespace()
        self.comm: Communicator | None = None
        self._lifespan = lifespan
        self._tasks: list[_Task] = []
        self._rpcs: list[_Rpc] = []
        self._broadcasts: list[_Broadcast] = []
        self._on_startup: list[Hook] = []
        self._on_shutdown: list[Hook] = []
        self._status = AppStatus()
        self._status_listeners: list[Callable[[AppStatus], object]] = []
        self._serving: _Serving | None = None
        self._stop_requested = False

    def __repr__(self) -> str:
        return (
            f"<App {self.name!r}: {len(self._tasks)} task, {len(self._rpcs)} RPC, "
            f"{len(self._broadcasts)} broadcast subscribers; {self._status.state}>"
        )

    # ------------------------------------------------------------ declaring subscribers

    @overload
    def task(self, queue: F, /) -> F: ...

    @overload
    def task(
        self,
        queue: str | None = None,
        *,
        prefetch_count: int | None = None,
        identifier: str | None = None,
    ) -> Callable[[F], F]: ...

    def task(
        self,
        queue: str | F | None = None,
        *,
        prefetch_count: int | None = None,
        identifier: str | None = None,
    ) -> F | Callable[[F], F]:
        """Decorate ``fn(comm, task)`` as a task subscriber of ``queue``.

        ``@app.task`` (the communicator's default queue) or
        ``@app.task(queue="q", prefetch_count=4)``: ``prefetch_count`` tasks of the queue are
        handled at once by each process (default: the app's ``task_prefetch_count``, 1).
        Several subscribers of one queue are tried in order, as in
        :meth:`~kiwi_anyio.TaskQueue.add_task_subscriber`. The function is returned
        unchanged. A task whose handler is still running when the app stops is given
        ``drain_timeout`` to finish; then it is cancelled and the task requeued.

        Raises:
            ValueError: the queue already has a subscriber with another ``prefetch_count``.
        """
        if callable(queue):
            return self.task()(queue)
        name = queue

        def register(fn: F) -> F:
            _check_callable(fn, "task")
            for known in self._tasks:
                if (
                    known.queue == name
                    and prefetch_count is not None
                    and known.prefetch_count not in (None, prefetch_count)
                ):
                    raise ValueError(
                        f"task queue {name!r} has prefetch_count={known.prefetch_count} "
                        f"already, not {prefetch_count}"
                    )
            self._tasks.append(_Task(fn, name, prefetch_count, identifier))
            return fn

        return register

    @overload
    def rpc(self, identifier: F, /) -> F: ...

    @overload
    def rpc(self, identifier: str | None = None) -> Callable[[F], F]: ...

    def rpc(self, identifier: str | F | None = None) -> F | Callable[[F], F]:
        """Decorate ``fn(comm, msg)`` as the RPC subscriber ``identifier``.

        ``@app.rpc("inc")``, or ``@app.rpc`` for the function's name as the identifier. The
        function is returned unchanged. An identifier taken by another process makes the
        start fail (:class:`~kiwi_anyio.DuplicateSubscriberIdentifier`), so
        ``kiwi-anyio worker`` serves an app with RPC subscribers in one process only
        (``--workers 1``). A call still running when the app stops gets ``drain_timeout``
        to answer.

        Raises:
            ValueError: the identifier is declared twice or contains ``*`` or ``#``.
        """
        if callable(identifier):
            return self.rpc(getattr(identifier, "__name__", None))(identifier)
        ident = identifier

        def register(fn: F) -> F:
            _check_callable(fn, "RPC")
            name = ident or getattr(fn, "__name__", None)
            if not name:
                raise ValueError(f"give {fn!r} an RPC identifier: @app.rpc('name')")
            if "*" in name or "#" in name:
                raise ValueError(f"an RPC identifier cannot contain '*' or '#': {name!r}")
            if any(known.identifier == name for known in self._rpcs):
                raise ValueError(f"RPC subscriber {name!r} is declared twice")
            self._rpcs.append(_Rpc(fn, name))
            return fn

        return register

    @overload
    def broadcast(self, subject: F, /) -> F: ...

    @overload
    def broadcast(
        self, subject: Any = None, *, sender: Any = None, identifier: str | None = None
    ) -> Callable[[F], F]: ...

    def broadcast(
        self, subject: Any = None, *, sender: Any = None, identifier: str | None = None
    ) -> Any:
        """Decorate ``fn(comm, body, sender, subject, correlation_id)`` as a broadcast
        subscriber, filtered on ``subject`` and ``sender`` (``*`` wildcards, as
        :class:`~kiwi_anyio.BroadcastFilter`; ``None``: any).

        ``@app.broadcast(subject="purchase.*")`` or bare ``@app.broadcast``. Every process
        of a worker gets every broadcast. The function is returned unchanged.
        """
        if callable(subject) and sender is None and identifier is None:
            return self.broadcast()(subject)

        def register(fn: F) -> F:
            _check_callable(fn, "broadcast")
            self._broadcasts.append(_Broadcast(fn, subject, sender, identifier))
            return fn

        return register

    def on_startup(self, fn: F) -> F:
        """Decorate a hook run once connected, before any subscriber takes a message.

        The hook is ``hook(comm)`` or ``hook()``, ``async def`` or plain (a plain one runs in
        the event loop: keep it short). Hooks run in the order declared; one that raises
        makes the start fail (the worker exits with code 1); the ``on_shutdown`` hooks
        still run.
        """
        self._on_startup.append(fn)
        return fn

    def on_shutdown(self, fn: F) -> F:
        """Decorate a hook run at the stop, once every handler has finished (or was
        cancelled after ``drain_timeout``) and the communicator has closed.

        The hook is ``hook(comm)`` or ``hook()`` (the communicator it gets can no longer
        send: release resources here). Hooks run in reverse order of declaration, shielded
        from cancellation, each for at most 10 s; one that raises is logged and the others
        still run. They run after a failed start too.
        """
        self._on_shutdown.append(fn)
        return fn

    def lifespan_context(self, fn: Lifespan) -> Lifespan:
        """Decorate ``@asynccontextmanager``-style ``fn(app)`` as the app's lifespan (see
        the ``lifespan`` argument): entered first, exited last."""
        self._lifespan = fn
        return fn

    # ------------------------------------------------------------ status

    @property
    def status(self) -> AppStatus:
        """The app's state and whether it is connected (see :class:`AppStatus`)."""
        return self._status

    def add_status_listener(self, listener: Callable[[AppStatus], object]) -> None:
        """Call ``listener(status)`` on every change of :attr:`status` (in the event loop;
        the worker's health check uses it)."""
        self._status_listeners.append(listener)

    def remove_status_listener(self, listener: Callable[[AppStatus], object]) -> None:
        """Stop calling a status listener."""
        self._status_listeners.remove(listener)

    def _set_status(self, **changes: Any) -> None:
        status = dataclasses.replace(self._status, **changes)
        if status == self._status:
            return
        self._status = status
        for listener in list(self._status_listeners):
            try:
                listener(status)
            except Exception:
                logger.exception("status listener %r raised", listener)

    # ------------------------------------------------------------ serving

    def stop(self) -> None:
        """Ask :meth:`serve` to stop gracefully; returns at once.

        During the start, the start is abandoned (nothing was consumed yet). While running:
        stop taking messages, let running handlers finish within ``drain_timeout``, cancel
        the rest (their tasks are requeued), run the ``on_shutdown`` hooks and return from
        :meth:`serve`. Call it in the event loop's thread; it does nothing if not serving.
        """
        serving = self._serving
        if serving is None:
            return
        if self._status.state == "starting":
            self._stop_requested = True  # seen once connected, if not in the hooks yet
            serving.startup.cancel()
        serving.stop.set()

    async def serve(
        self,
        url: str | None = None,
        *,
        drain_timeout: float | None = None,
        task_status: anyio.abc.TaskStatus[Communicator] | None = None,
        **options: Any,
    ) -> None:
        """Connect, run the startup hooks, subscribe everything and serve until
        :meth:`stop`; then drain and run the shutdown hooks.

        ``await tg.start(app.serve)`` returns the communicator once every subscriber is
        consuming. Works on asyncio and trio.

        Args:
            url: overrides the app's URL.
            drain_timeout: overrides the app's ``drain_timeout``.
            **options: override the app's :func:`kiwi_anyio.connect` options.

        Raises:
            RuntimeError: the app is being served already.
            ConnectionFailed: the broker cannot be reached or refused the login.

        Cancellation: cancelling ``serve`` stops at once: running handlers are cancelled
        and their tasks requeued (a plain-function handler's thread is abandoned); the
        ``on_shutdown`` hooks and the lifespan's exit still run (shielded). Use
        :meth:`stop` for a graceful stop.
        """
        if self._serving is not None:
            raise RuntimeError(f"{self!r} is being served already")
        status = task_status or anyio.TASK_STATUS_IGNORED
        serving = self._serving = _Serving()
        self._stop_requested = False
        timeout = self.drain_timeout if drain_timeout is None else drain_timeout
        connect_options = {**self.options, **options, "drain_timeout": max(0.0, timeout)}
        target = url or self.url
        self._set_status(state="starting", connected=False)
        try:
            async with AsyncExitStack() as stack:
                if self._lifespan is not None:
                    await stack.enter_async_context(self._lifespan(self))
                opened: list[Communicator] = []
                # the shutdown hooks run after the communicator closed (every handler done)
                stack.push_async_callback(self._run_shutdown_hooks, opened)
                comm = await stack.enter_async_context(kiwi_connect(target, **connect_options))
                opened.append(comm)
                self.comm = comm
                comm.add_connection_listener(self._on_connection_event)
                self._set_status(connected=comm.is_connected)
                with serving.startup:
                    if self._stop_requested:
                        serving.startup.cancel()
                    for hook in self._on_startup:
                        await _call_hook(hook, comm)
                    await self._subscribe(comm)
                    self._set_status(state="running")
                    logger.info("%s: serving on %s (%s)", self.name, comm.url, self._summary())
                    status.started(comm)
                if serving.startup.cancelled_caught:
                    logger.info("%s: stopped during the start", self.name)
                    return
                await serving.stop.wait()
                self._set_status(state="stopping")
                logger.info(
                    "%s: stopping: no new messages; running handlers get %s s", self.name, timeout
                )
                # leaving the block closes the communicator: it drains for drain_timeout
        finally:
            self.comm = None
            self._serving = None
            self._set_status(state="stopped", connected=False)
        logger.info("%s: stopped", self.name)

    def run(
        self,
        url: str | None = None,
        *,
        backend: str = "asyncio",
        drain_timeout: float | None = None,
    ) -> None:
        """Serve the app in this process until SIGINT or SIGTERM (blocks).

        The first signal stops gracefully (see :meth:`stop`); a second one exits the
        process at once with status 130 (the broker redelivers unfinished tasks). Logs go
        to stderr at INFO unless logging is configured already. ``backend`` is
        ``"asyncio"`` or ``"trio"``. A plain-function handler still running in its thread
        after the drain (its task requeued) keeps the interpreter from exiting until it
        returns; ``kiwi-anyio worker`` exits without waiting for it.

        Raises:
            ConnectionFailed: the broker cannot be reached or refused the login.
        """
        from .worker import configure_logging, run_in_process

        if not logging.getLogger().handlers:
            configure_logging("INFO", "text")
        run_in_process(self, url=url, backend=backend, drain_timeout=drain_timeout)

    @asynccontextmanager
    async def test_client(self, url: str | None = None, **options: Any) -> AsyncIterator[Any]:
        """``async with app.test_client() as client:`` serves the app on a private
        ``memory://`` broker (no RabbitMQ needed) and yields a second communicator on the
        same broker to send with (``client.task_queue("q").task_send(...)``,
        ``client.rpc_send(...)``, ``client.broadcast_send(...)``).

        Exchange names are private to the client (``testing_mode``), so ``url`` may also
        name a real broker. The app stops (gracefully) when the block exits; an exception
        in a startup hook is raised here.

        Cancellation: cancelling the block stops the app at once, as cancelling
        :meth:`serve` does.
        """
        target = url or f"memory://app-test-{uuid.uuid4().hex}"
        suffix = uuid.uuid4().hex[:12]
        defaults = {
            "message_exchange": f"app-test.messages.{suffix}",
            "task_exchange": f"app-test.tasks.{suffix}",
            "task_queue": f"app-test.tasks.{suffix}",
            "testing_mode": True,
        }
        names = {**defaults, **options}
        client_options = {
            k: v for k, v in {**self.options, **names}.items() if k in _CLIENT_OPTIONS
        }
        try:
            async with anyio.create_task_group() as tg:
                await tg.start(functools.partial(self.serve, target, **names))
                try:
                    async with kiwi_connect(target, **client_options) as client:
                        yield client
                finally:
                    self.stop()
        except BaseExceptionGroup as group:
            error = _single(group)
            if error is None:
                raise
            raise error from None

    # ------------------------------------------------------------ internals

    def _summary(self) -> str:
        parts = [f"task queue {_queue_label(t.queue)}" for t in self._tasks]
        parts += [f"RPC {r.identifier!r}" for r in self._rpcs]
        parts += [f"broadcasts {b.subject or '*'!s}" for b in self._broadcasts]
        return ", ".join(parts) or "no subscribers"

    def _on_connection_event(self, event: str, _error: BaseException | None) -> None:
        if event in ("connected", "recovered"):
            self._set_status(connected=True)
        elif event in ("disconnected", "closed"):
            self._set_status(connected=False)

    async def _subscribe(self, comm: Communicator) -> None:
        for rpc in self._rpcs:
            await comm.add_rpc_subscriber(rpc.fn, rpc.identifier)
        for broadcast in self._broadcasts:
            await comm.add_broadcast_subscriber(
                BroadcastFilter(broadcast.fn, subject=broadcast.subject, sender=broadcast.sender),
                broadcast.identifier,
            )
        for task in self._tasks:
            name = comm.task_queue_name if task.queue is None else task.queue
            prefetch = self._prefetch_of(task.queue)
            queue = comm.task_queue(name, prefetch_count=prefetch)
            await queue.add_task_subscriber(task.fn, task.identifier)

    def _prefetch_of(self, queue: str | None) -> int | None:
        for task in self._tasks:
            if task.queue == queue and task.prefetch_count is not None:
                return task.prefetch_count
        return None

    async def _run_shutdown_hooks(self, opened: list[Communicator]) -> None:
        if not opened:
            return  # never connected: no startup hook ran
        comm = opened[0]
        for hook in reversed(self._on_shutdown):
            with anyio.CancelScope(shield=True), anyio.move_on_after(SHUTDOWN_HOOK_TIMEOUT) as s:
                try:
                    await _call_hook(hook, comm)
                except Exception:
                    logger.exception("%s: shutdown hook %r raised", self.name, hook)
            if s.cancelled_caught:
                logger.error(
                    "%s: shutdown hook %r took longer than %s s",
                    self.name,
                    hook,
                    SHUTDOWN_HOOK_TIMEOUT,
                )


#: connect() options that a test client shares with the app (names and the codec)
_CLIENT_OPTIONS = {
    "message_exchange",
    "task_exchange",
    "task_queue",
    "testing_mode",
    "codec",
    "encoder",
    "decoder",
    "queue_type",
}


def _single(group: BaseExceptionGroup[BaseException]) -> Exception | None:
    """The one ordinary exception in (nested) single-exception groups, else None."""
    error: BaseException = group
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    if isinstance(error, BaseExceptionGroup) or not isinstance(error, Exception):
        return None
    return error


def _queue_label(queue: str | None) -> str:
    return "(default)" if queue is None else repr(queue)


def _check_callable(fn: Any, what: str) -> None:
    if not callable(fn):
        raise TypeError(f"a {what} subscriber must be callable, not {fn!r}")


def _wants_argument(hook: Hook) -> bool:
    try:
        signature = inspect.signature(hook)
    except (TypeError, ValueError):  # pragma: no cover - builtins
        return True
    positional = [
        p
        for p in signature.parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
    ]
    return bool(positional)


async def _call_hook(hook: Hook, comm: Communicator) -> None:
    result = hook(comm) if _wants_argument(hook) else hook()
    if inspect.isawaitable(result):
        await _awaited(result)


async def _awaited(result: Awaitable[Any]) -> Any:
    return await result

"""One process serving one app until a signal (:func:`run_in_process`), supervised or not.

Owns: the process's signal handling (the first SIGINT/SIGTERM stops gracefully, a second one
exits at once), its health reports, and its side of the socket pair (``_pipe.py``): reporting
its status, obeying ``stop``/``kill``, stopping when the supervisor is gone. Must not touch:
other processes (``_supervisor.py``), the app's own serving (:meth:`App.serve`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
from collections.abc import Callable
from typing import Any

import anyio

from ..app import App, AppStatus
from ._health import HealthReporter
from ._pipe import CHILD_REPORT_MAX_EVERY, receive_lines, send_line
from ._setup import count_signals, exit_now

logger = logging.getLogger("kiwi_anyio.worker")


def run_in_process(
    app: App,
    *,
    url: str | None = None,
    backend: str = "asyncio",
    drain_timeout: float | None = None,
    health: HealthReporter | None = None,
    supervised_fd: int | None = None,
    report_every: float = CHILD_REPORT_MAX_EVERY,
) -> None:
    """Serve ``app`` in this process until a signal (see the module's docstring).

    ``supervised_fd`` is the socket to a supervisor, told the status every ``report_every``
    seconds.

    Raises:
        ConnectionFailed: the broker cannot be reached or refused the login.
        Exception: what a startup hook raised.
    """
    channel = socket.socket(fileno=supervised_fd) if supervised_fd is not None else None
    if channel is not None:
        channel.setblocking(False)
    try:
        anyio.run(
            _in_process, app, url, drain_timeout, health, channel, report_every, backend=backend
        )
    except BaseExceptionGroup as group:
        raise _leaf(group) from None
    finally:
        if channel is not None:
            with contextlib.suppress(OSError):
                channel.shutdown(socket.SHUT_RDWR)
            channel.close()


def _leaf(error: BaseException) -> BaseException:
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error


async def _in_process(
    app: App,
    url: str | None,
    drain_timeout: float | None,
    health: HealthReporter | None,
    channel: socket.socket | None,
    report_every: float,
) -> None:
    def report(status: AppStatus) -> None:
        if health is not None:
            health.update(
                status.healthy,
                state=status.state,
                connected=status.connected,
                consuming=status.consuming,
                pid=os.getpid(),
                app=app.name,
            )
        if channel is not None:
            send_line(channel, f"status {status.state} {int(status.connected)}")

    app.add_status_listener(report)
    try:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with anyio.create_task_group() as tg:
                tg.start_soon(_watch_signals, signals, app)
                if channel is not None:
                    tg.start_soon(_watch_supervisor, channel, app)
                    tg.start_soon(_report_every, report, app, report_every)
                if health is not None and health.enabled:
                    report(app.status)
                    await tg.start(health.run)
                await app.serve(url, drain_timeout=drain_timeout)
                tg.cancel_scope.cancel()
    finally:
        app.remove_status_listener(report)


async def _watch_signals(signals: Any, app: App) -> None:
    def first(name: str) -> None:
        logger.warning(
            "%s: stopping gracefully (running handlers get %s s; send it again to stop at once)",
            name,
            app.drain_timeout if app.comm is None else app.comm.drain_timeout,
        )
        _stop(app)

    await count_signals(signals, first, lambda name: exit_now(f"{name} again"))


def _stop(app: App) -> None:
    app.stop()
    app._stop_requested = True  # a stop during the start is seen once connected


async def _report_every(report: Callable[[AppStatus], None], app: App, every: float) -> None:
    """Tell the supervisor the status now and then: its silence means a blocked loop."""
    while True:
        await anyio.sleep(every)
        report(app.status)


async def _watch_supervisor(channel: socket.socket, app: App) -> None:
    async for line in receive_lines(channel):
        if line == b"stop":
            if app.status.state in ("starting", "running"):
                logger.info("the supervisor says stop: stopping gracefully")
            _stop(app)
        elif line == b"kill":
            exit_now("the supervisor says stop at once")
    logger.warning("the supervisor is gone: stopping gracefully")
    _stop(app)
